#!/bin/sh
# leakcheck.sh — the sd3 CLI's main paths under valgrind (memcheck, --leak-check=full): txt2img with CFG,
# --save-latents and --latents, img2img, batch, no-T5, `sd3 info`, and error paths (bad model folder, a full disk,
# damaged weights, bad init image, bad flags). A path fails on any invalid read/write, use of
# uninitialised memory, or a definitely/indirectly/possibly lost block (memory still reachable at exit()
# after a fatal error is not a leak); each case also checks the exit status it should have.
#
#   scripts/leakcheck.sh [BUILD] [GOLDEN]        (BUILD defaults to build, GOLDEN to ../shared/golden)
#
# valgrind cannot run AVX-512 code; the kernels pick their variant from CPUID, which valgrind reports
# without AVX-512, so the AVX2 / scalar paths are the ones checked here.
set -u
BUILD=${1:-build}
GOLDEN=${2:-../shared/golden}
SD3=$BUILD/sd3
TINY=$GOLDEN/tiny-sd3
[ -x "$SD3" ] || { echo "leakcheck: $SD3 not built"; exit 1; }
command -v valgrind >/dev/null || { echo "leakcheck: valgrind not installed"; exit 1; }
T=$(mktemp -d /tmp/sd3c_leak_XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0 fail=0
WRAP=

# case NAME WANT_RC ARGS... : WANT_RC is 0 (must succeed) or x (must fail, non-zero)
case_() {
    name=$1 want=$2
    shift 2
    $WRAP valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=99 \
        --log-file="$T/vg.log" "$SD3" "$@" > "$T/out.log" 2>&1
    rc=$?
    ok=1
    [ $rc = 99 ] && ok=0
    [ -s "$T/vg.log" ] && ok=0
    if [ "$want" = 0 ] && [ $rc != 0 ]; then ok=0; fi
    if [ "$want" = x ] && [ $rc = 0 ]; then ok=0; fi
    if [ $ok = 1 ]; then
        pass=$((pass + 1)); echo "ok    $name"
    else
        fail=$((fail + 1)); echo "FAIL  $name (exit $rc)"
        sed 's/^/      /' "$T/vg.log" | head -40
        tail -3 "$T/out.log" | sed 's/^/      out: /'
    fi
}

G="-m $TINY -W 64 -H 64 --threads 2 --seed 3"
case_ "txt2img cfg 7, save latents"     0 generate $G -p "a photo of a cat" --steps 2 --cfg 7 --save-latents "$T/lat.safetensors" -o "$T/a.png"
case_ "txt2img from --latents"          0 generate $G -p "a photo of a cat" --steps 2 --latents "$T/lat.safetensors" -o "$T/b.png"
case_ "img2img strength 0.6"            0 generate $G -p "a dog" -n "blurry" --steps 3 --init-img "$T/a.png" --strength 0.6 -o "$T/c.png"
case_ "batch 2, cfg 1, no T5"           0 generate $G -p "x" --steps 1 --cfg 1 --batch 2 --no-t5 -o "$T/d_%d.png"
case_ "skip-layer guidance"             0 generate $G -p "x" --steps 4 --skip-layers 1 --slg-scale 2 --slg-start 0 --slg-stop 1 -o "$T/e.png"
case_ "info"                            0 info "$T/a.png"
case_ "version"                         0 version
case_ "error: model folder missing"     x generate -m /nonexistent/model -p x -o "$T/f.png"
mkdir -p "$T/pipe"
cp -r "$TINY"/. "$T/pipe/"
chmod -R u+w "$T/pipe"
head -c 300000 "$TINY/transformer/diffusion_pytorch_model.safetensors" > "$T/pipe/transformer/diffusion_pytorch_model.safetensors"
case_ "error: truncated transformer"    x generate $G -m "$T/pipe" -p x --steps 1 -o "$T/g.png"
cp "$TINY/transformer/diffusion_pytorch_model.safetensors" "$T/pipe/transformer/"
rm "$T/pipe/tokenizer_3/spiece.model"
printf '{"model": {"type": "BPE"}}' > "$T/pipe/tokenizer_3/tokenizer.json"
case_ "error: bad T5 tokenizer"         x generate $G -m "$T/pipe" -p x --steps 1 -o "$T/h.png"
printf 'not an image' > "$T/bad.png"
case_ "error: bad init image"           x generate $G -p x --init-img "$T/bad.png" -o "$T/i.png"
# regression (fuzz_image): a JPEG scan naming a Huffman table no DHT defined makes stb 2.27 read it
# uninitialised (memcheck: conditional jump on uninitialised values); must be refused before stb
case_ "error: JPEG with an undefined Huffman table" x generate $G -p x --init-img fuzz/regressions/fuzz_image/stb_jpeg_uninit_huffman.jpg -o "$T/u.png"
case_ "error: bad latents file"         x generate $G -p x --latents "$T/bad.png" -o "$T/j.png"
case_ "error: bad flag"                 x generate $G -p x --steps 0
case_ "error: info on a non-PNG"        x info "$T/bad.png"
# a full disk (RLIMIT_FSIZE 4 KB with SIGXFSZ ignored, so writes fail with EFBIG): the error paths of
# the PNG and latents writers
if command -v python3 >/dev/null; then
    cat > "$T/fsize.py" <<'PY'
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
os.execvp(sys.argv[1], sys.argv[1:])
PY
    WRAP="python3 $T/fsize.py"
    case_ "error: disk full writing the PNG"     x generate $G -p x --steps 1 -o "$T/k.png"
    case_ "error: disk full writing the latents" x generate $G -p x --steps 1 --save-latents "$T/l.safetensors" -o "$T/l.png"
    WRAP=
fi
echo "leakcheck: $pass passed, $fail failed"
[ $fail = 0 ]
