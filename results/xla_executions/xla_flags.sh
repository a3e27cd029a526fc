# XLA:CPU's library options against the default, each variant its own process, in two passes of reversed order.
# Run from the repository root: bash results/xla_executions/xla_flags.sh > results/xla_executions/xla_flags.txt
V=("" "--xla_cpu_experimental_ynn_fusion_type=individual_dot" "--xla_cpu_experimental_ynn_fusion_type=individual_dot,dot,eltwise"
   "--xla_cpu_use_xnnpack=true --xla_cpu_experimental_xnn_fusion_type=dot,eltwise"
   "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY")
for order in "0 1 2 3 4" "4 3 2 1 0"; do
  for i in $order; do XLA_FLAGS="${V[$i]}" python results/xla_executions/xla_flags.py vae,avae 200 2>&1 | grep "^XLA_FLAGS"; done
done
