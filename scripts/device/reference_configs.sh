# The study's configurations of PB-LLM, BiLLM, SliM-LLM and QuIP as both sides run them (sourced by
# scripts/device/compare_reference_methods.sh and bench/gpu/methods_8b.sh).
#
# reference_config NAME -> "method|configuration|lowbit spec|reference_pipeline.py arguments"
# Reads, at the call: REFS (the official work trees), PB_G (PB-LLM's group and GPTQ block),
# BILLM_BLOCK, SLIM_G, QUIP_SEED. quip-W-sN is quip-W with the butterflies' seed N instead of
# QUIP_SEED, so that one list of configurations holds a spread over seeds (quip-4 quip-4-s1 ...).
reference_config() {
  case $1 in
    pbllm-1.7) echo "PB-LLM|low_frac 0.9, 8-bit salient, g$PB_G|pbllm:low_frac=0.9,high_bit=8,g=$PB_G,block=$PB_G|--method pbllm --repo $REFS/PB-LLM --low_frac 0.9 --high_bit 8 --groupsize $PB_G --blocksize $PB_G" ;;
    # 6/7 to the double's 17 digits, the same number on both sides: 1 + 7 (1 - 6/7) = 2 bits.
    pbllm-2) echo "PB-LLM|low_frac 6/7, 8-bit salient, g$PB_G|pbllm:low_frac=0.8571428571428571,high_bit=8,g=$PB_G,block=$PB_G|--method pbllm --repo $REFS/PB-LLM --low_frac 0.8571428571428571 --high_bit 8 --groupsize $PB_G --blocksize $PB_G" ;;
    billm) echo "BiLLM|braq, block $BILLM_BLOCK|billm:block=$BILLM_BLOCK|--method billm --repo $REFS/BiLLM --blocksize $BILLM_BLOCK" ;;
    slim-2|slim-3) local w=${1#slim-}
      echo "SliM-LLM|${w}-bit g$SLIM_G|slim:w=$w,g=$SLIM_G|--method slim --repo $REFS/SliM-LLM/slim-llm --wbits $w --groupsize $SLIM_G" ;;
    quip-[234]|quip-[234]-s[0-9]*) local w=${1:5:1} seed=$QUIP_SEED
      if [[ $1 == *-s* ]]; then
        seed=${1#quip-?-s}
        [[ $seed =~ ^[0-9]+$ ]] || { echo "configuration '$1': the seed after -s is not a number" >&2; return 1; }
      fi
      echo "QuIP|${w}-bit, seed $seed|quip:w=$w,seed=$seed|--method quip --repo $REFS/QuIP --wbits $w --seed $seed" ;;
    *) echo "unknown configuration '$1' (known: pbllm-1.7 pbllm-2 billm slim-2 slim-3 quip-2 quip-3 quip-4, quip-W-sN)" >&2
      return 1 ;;
  esac
}
