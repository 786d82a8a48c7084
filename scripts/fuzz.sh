#!/bin/sh
# fuzz.sh — seed and run the libFuzzer targets of fuzz/ (built by `make -f fuzz/Makefile`).
#
#   scripts/fuzz.sh [--seeds-only] BUILD GOLDEN [TARGET ...]
#
# Seeds: fuzz/mkseeds.py cuts the golden files down into $BUILD/fuzz/seeds/<target> (plus a few image
# formats written with stb_image_write when a C compiler finds it). Each target then runs for
# $FUZZ_SECONDS (default 60) on its growing corpus $BUILD/fuzz/corpus/<target> plus the seeds, under
# `nice`, with a 2 GB RSS limit and a 25 s per-input timeout; crashes, leaks, timeouts and OOMs land in
# $BUILD/fuzz/crashes/ and fail the run. One summary line per target: executions, corpus, crashes.
# FUZZ_KEEP_SEEDS=1 reuses existing seeds (for several runs side by side).
set -u
seeds_only=0
[ "${1:-}" = "--seeds-only" ] && { seeds_only=1; shift; }
BUILD=${1:-build}
GOLDEN=${2:-../shared/golden}
shift 2 2>/dev/null || shift $#
SECONDS_EACH=${FUZZ_SECONDS:-60}
FZ=$BUILD/fuzz
targets=${*:-$(cd "$FZ" && ls fuzz_* 2>/dev/null | grep -v '\.' )}

if [ "${FUZZ_KEEP_SEEDS:-0}" != 1 ] || [ ! -d "$FZ/seeds" ]; then
rm -rf "$FZ/seeds"
python3 fuzz/mkseeds.py "$FZ/seeds" "$GOLDEN" >/dev/null || { echo "fuzz.sh: seed generation failed"; exit 1; }
# a JPEG, TGA and BMP written by stb_image_write (system libstb), when available
cat > "$FZ/mkimg.c" <<'C'
#include <stb/stb_image_write.h>
int main(int c, char **v) {
    unsigned char px[12 * 10 * 3];
    for (int i = 0; i < (int)sizeof px; i++) px[i] = (unsigned char)(i * 7);
    char p[4096];
    snprintf(p, sizeof p, "%s/q90_12x10.jpg", v[1]); stbi_write_jpg(p, 12, 10, 3, px, 90);
    snprintf(p, sizeof p, "%s/q20_12x10_gray.jpg", v[1]); stbi_write_jpg(p, 12, 10, 1, px, 20);
    snprintf(p, sizeof p, "%s/rgb_12x10.tga", v[1]); stbi_write_tga(p, 12, 10, 3, px);
    snprintf(p, sizeof p, "%s/rgba_6x5.bmp", v[1]); stbi_write_bmp(p, 6, 5, 4, px);
    return c < 2;
}
C
if cc -include stdio.h -o "$FZ/mkimg" "$FZ/mkimg.c" -lstb 2>/dev/null; then "$FZ/mkimg" "$FZ/seeds/fuzz_image"; fi
fi
[ $seeds_only = 1 ] && { echo "seeds in $FZ/seeds"; exit 0; }

mkdir -p "$FZ/crashes"
fail=0
for t in $targets; do
    t=$(basename "$t")
    [ -x "$FZ/$t" ] || { echo "fuzz.sh: $FZ/$t not built"; fail=1; continue; }
    mkdir -p "$FZ/corpus/$t"
    log="$FZ/$t.log"
    before=$(ls "$FZ/crashes" | grep -c "^$t-" || true)
    SD3_GOLDEN="$GOLDEN" nice -n 19 "$FZ/$t" -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=25 \
        -print_final_stats=1 -artifact_prefix="$FZ/crashes/$t-" "$FZ/corpus/$t" "$FZ/seeds/$t" > "$log" 2>&1
    rc=$?
    after=$(ls "$FZ/crashes" | grep -c "^$t-" || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    corp=$(ls "$FZ/corpus/$t" | wc -l)
    echo "$t: ${SECONDS_EACH}s, ${execs:-?} executions, corpus $corp, crashes $((after - before)), exit $rc"
    if [ $rc != 0 ] || [ "$after" != "$before" ]; then
        fail=1
        grep -m3 -E "ERROR|SUMMARY|runtime error|fuzz:" "$log" | sed 's/^/    /'
        ls "$FZ/crashes" | grep "^$t-" | sed "s|^|    $FZ/crashes/|"
    fi
done
exit $fail
