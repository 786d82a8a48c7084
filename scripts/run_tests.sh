#!/usr/bin/env bash
# Run every unit test binary and the golden runner (implemented kinds), sum their
# "N passed, N failed" lines, print the total last, exit non-zero if anything failed.
set -u
BUILD=${1:-build}
GOLDEN=${2:-../shared/golden}
total_p=0; total_f=0; bad=0
run() {
  local name=$1; shift
  local out rc
  out=$("$@" 2>&1); rc=$?
  echo "$out" | grep -v '^ok ' | sed "s|^|[$name] |" | tail -n 40
  local line
  line=$(echo "$out" | grep -oE '[0-9]+ passed, [0-9]+ failed' | tail -n 1)
  local p f
  p=$(echo "$line" | awk '{print $1}')
  f=$(echo "$line" | awk '{print $3}')
  [ -n "$line" ] || { p=0; f=1; echo "[$name] no result line (exit $rc)"; }
  if [ $rc -ne 0 ] && [ "$f" = 0 ]; then f=1; echo "[$name] exited $rc"; fi
  total_p=$((total_p + p)); total_f=$((total_f + f))
  [ $rc -eq 0 ] || bad=1
}
for t in "$BUILD"/tests/test_*; do
  [ -x "$t" ] || continue
  run "$(basename "$t")" "$t"
done
if [ -d "$GOLDEN" ]; then
  run golden "$BUILD/golden" "$GOLDEN" --implemented
  # the opt-in bf16 mode against the same F32 references, within its measured bound (golden_main.c)
  run golden-bf16 "$BUILD/golden" "$GOLDEN" --implemented --precision bf16 \
    --only torch_cpu_randn,tokenizers,text_encoders,encode_prompt,transformer_forward,vae_decode,vae_encode,scheduler_set_timesteps,scheduler_img2img,scheduler_step,txt2img,img2img,lora_forward
else
  echo "[golden] $GOLDEN not found: golden cases not run"; total_f=$((total_f + 1)); bad=1
fi
echo "$total_p passed, $total_f failed"
[ $bad -eq 0 ] && [ $total_f -eq 0 ]
