#!/usr/bin/env bash
# The paper's comparison in one command: the same subject, prompts and seeds with
# Layout-and-Retouch (`layret generate`) and with the personalized model alone
# (`layret txt2img --personalization`), then `layret eval` of both and one table side by side.
#
#   tools/compare.sh OUT --model M --personalization KIND:PATH --phrase "sks dog" --class dog \
#       --reference dog/00.jpg [--reference …] --prompt "a sks dog on the beach" [--prompt …] \
#       [--seed 0] [--num-samples 4] [--steps 50] [--size 512] \
#       [--clip openai/clip-vit-large-patch14] [--dino facebook/dino-vits16] [--layret PATH]
#
# Writes OUT/layout-and-retouch/ (with masks, for the layout diversity) and
# OUT/personalized-only/ (p<P>_s<K>.png, the same initial noise per prompt and sample), each
# with scores.json and scores.md, and OUT/comparison.md.
set -euo pipefail
[ $# -ge 1 ] || { sed -n 2,14p "$0"; exit 2; }
out=$1; shift
layret=${LAYRET:-$(cd "$(dirname "$0")/.." && pwd)/target/release/layret}
model= phrase= class= seed=0 samples=4 steps=50 size= clip=openai/clip-vit-large-patch14 dino=facebook/dino-vits16
pers=() refs=() prompts=()
while [ $# -gt 0 ]; do
    case $1 in
        --model) model=$2 ;;
        --personalization) pers+=("$2") ;;
        --phrase) phrase=$2 ;;
        --class) class=$2 ;;
        --reference) refs+=("$2") ;;
        --prompt) prompts+=("$2") ;;
        --seed) seed=$2 ;;
        --num-samples) samples=$2 ;;
        --steps) steps=$2 ;;
        --size) size=$2 ;;
        --clip) clip=$2 ;;
        --dino) dino=$2 ;;
        --layret) layret=$2 ;;
        *) echo "unknown argument $1"; exit 2 ;;
    esac
    shift 2
done
[ -n "$model" ] && [ -n "$phrase" ] && [ -n "$class" ] && [ ${#pers[@]} -gt 0 ] && [ ${#refs[@]} -gt 0 ] && [ ${#prompts[@]} -gt 0 ] || {
    echo "needs --model, --personalization, --phrase, --class, --reference and --prompt"; exit 2; }
common=(--model "$model" --steps "$steps")
[ -n "$size" ] && common+=(--width "$size" --height "$size")
p_args=(); for p in "${pers[@]}"; do p_args+=(--personalization "$p"); done
r_args=(); for r in "${refs[@]}"; do r_args+=(--reference "$r"); done
q_args=(); for q in "${prompts[@]}"; do q_args+=(--prompt "$q"); done

lr=$out/layout-and-retouch
base=$out/personalized-only
mkdir -p "$lr" "$base"
"$layret" generate "${common[@]}" "${p_args[@]}" --phrase "$phrase" --class "$class" \
    "${r_args[@]}" "${q_args[@]}" --seed "$seed" --num-samples "$samples" --save-masks --out "$lr"
for i in "${!prompts[@]}"; do
    "$layret" txt2img "${common[@]}" "${p_args[@]}" --prompt "${prompts[$i]}" --seed "$seed" \
        --num-images "$samples" --out "$base/p${i}_s.png"
    # txt2img numbers several images out-N.png; eval wants p<P>_s<K>.png.
    if [ "$samples" -eq 1 ]; then
        mv "$base/p${i}_s.png" "$base/p${i}_s0.png"
    else
        for k in $(seq 0 $((samples - 1))); do mv "$base/p${i}_s-$k.png" "$base/p${i}_s$k.png"; done
    fi
done
ev_refs=(); for r in "${refs[@]}"; do ev_refs+=(--references "$r"); done
ev_prompts=(); for q in "${prompts[@]}"; do ev_prompts+=(--prompts "$q"); done
"$layret" eval "$lr" "$base" --clip "$clip" --dino "$dino" "${ev_prompts[@]}" "${ev_refs[@]}" \
    --phrase "$phrase" --class "$class" | tee "$out/scores.txt"
{
    echo "# Layout-and-Retouch vs the personalized model alone"
    echo
    echo "Same subject, prompts, seed $seed and $samples samples per prompt, $steps steps."
    echo
    start=$(grep -n '^| | CLIP-T' "$out/scores.txt" | tail -1 | cut -d: -f1)
    tail -n +"$start" "$out/scores.txt"
} > "$out/comparison.md"
echo "written $out/comparison.md"
