#!/usr/bin/env bash
# How the embedded default's artifacts and results/bench_tasks.* were made, in order.
# Resumable: `record` skips rows it has, distill-student resumes its Ray Train run by name.
# CPU times are for this project's 2-core machine, shared with other work.
set -euo pipefail
cd "$(dirname "$0")/.."
R=.venv/bin/routenlp

# 1. Specialist heads on the frontier's answers to every train query (~15 min).
$R distill-specialists --tier specialist --split train --cpus 1 --cache-rows-from-data \
    --out artifacts/specialists/embedded-v3

# 1b. embedded-v4 (shipped before v5, not in the tree; remade here for the side-by-side):
#     v3 with a fine-tuned fin_ner tagger
#     (MiniLM's top 2 layers; settings chosen on
#     a 15% slice of train, see results/README.md), the other heads carried over; pairs left out (no data copy). ~5 min.
$R distill-specialists --tasks fin_ner --split train --seed 0 --cpus 2 --finetune fin_ner=10 \
    --learning-rate 3e-4 --head-learning-rate 5e-3 --no-pairs \
    --carry-from artifacts/specialists/embedded-v3 --out artifacts/specialists/embedded-v4

# 1c. embedded-v5 (shipped): the same tagger with --quantize (int8 trunk in training and serving, int8 top when
#     serving; chosen on the same train slice, see results/README.md), the other heads carried over. ~5 min.
$R distill-specialists --tasks fin_ner --split train --seed 0 --cpus 2 --finetune fin_ner=10 \
    --learning-rate 3e-4 --head-learning-rate 5e-3 --quantize --no-pairs \
    --carry-from artifacts/specialists/embedded-v4 --out artifacts/specialists/embedded-v5

# 2. The SmolLM2 LoRA student on the frontier's answers to a seeded sample of each train split,
#    8 held-out train queries per task for early stopping. Stopped by hand for time at step 200
#    (67 min on one core shared with other jobs) while held-out loss was still falling (2.01 for the
#    base model, 1.44 at step 25, 1.17 at 100, 0.99 at 200); the same command with --steps 200 then
#    wrote the best adapter from the run's checkpoint (1 min).
$R distill-student --tier smollm2 --tasks cs_intent legal_clause legal_risk fin_ner cs_response \
    --limit 250 --limit-per-task cs_response=500 fin_ner=200 legal_clause=150 --holdout 8 \
    --steps 400 --eval-every 25 --patience 3 --lr 1e-3 --cpus 1 \
    --out artifacts/students/smollm2-v1 --run-name smollm2-v1

# 3. Every tier's answers to the validation splits: the specialist and the frontier on all rows,
#    the student on a seeded 300 per task (fin_ner has 136).
$R record --split validation --tiers specialist frontier --out var/records/embedded-v5 \
    --tasks cs_intent legal_clause legal_risk fin_ner cs_response fin_summarization
$R record --split validation --limit 300 --tiers smollm2 --out var/records/embedded-v5 \
    --tasks cs_intent legal_clause legal_risk fin_ner cs_response

# 3b. The base model on the same rows (a copy of the config without the adapter), and the comparison.
mkdir -p var
sed 's#^\( *\)adapter_path: artifacts/students/smollm2-v1#\1adapter_path: null#' serve_config.local.yaml \
    > var/base_config.yaml
$R record --config var/base_config.yaml --split validation --limit 300 --tiers smollm2 --out var/records/base \
    --tasks cs_intent legal_clause legal_risk fin_ner cs_response
.venv/bin/python benchmarks/student_vs_base.py --student var/records/embedded --base var/records/base \
    --out results/student_vs_base.json

# 4. Thresholds on all validation records (the shipped ones; in-sample for any check on validation).
$R calibrate --method quality --delta 0.1 --records var/records/embedded-v5 --version embedded-default-v7 \
    --out artifacts/thresholds/embedded-default.json --rows-out artifacts/thresholds/embedded-default.rows.jsonl
$R calibrate --records var/records/embedded-v5 --method risk --epsilon 0.05 --delta 0.1 --version embedded-default-risk-v6 \
    --out artifacts/thresholds/embedded-default-risk.json
$R calibrate --records var/records/embedded-v5 --alpha 0.1 --version embedded-default-coverage-v6 \
    --out artifacts/thresholds/embedded-default-coverage.json

# 5. Every policy fitted on one half of the records and read on the other.
$R bench tasks --records var/records/embedded-v5 --out results/bench_tasks.json
$R bench specialist --per-task 100 --rounds 3 --artifacts artifacts/specialists/embedded-v3 \
    artifacts/specialists/embedded-v4 --out results/bench_specialist_v3_vs_v4.json
$R bench specialist --per-task 100 --rounds 3 --artifacts artifacts/specialists/embedded-v4 \
    artifacts/specialists/embedded-v5 --out results/bench_specialist_v4_vs_v5.json

# 6. The served default under load, its memory, and the specialist engine alone (v2 against v3: see
#    results/bench_specialist_v2_vs_v3.json for how that side-by-side was run).
$R bench load --no-faults --out results/bench_load_nofaults.json
$R bench serving --only memory --out results/bench_serving_memory.json
$R bench specialist --per-task 60 --rounds 1 --out var/bench_specialist.json

# 7. The loop into the LoRA student: targeted vs untargeted over 2 seeds and 3 budgets, then a
#    second iteration from the first one's release (resumable: rerun the same line).
$R bench loop --run-id lora --traffic-per-task 300 --seeds 0 1 --curve-seeds 0 --budget 48 --top-cost-shares 0.4 0.2 0.75 --steps 12 --batch-size 8 \
    --learning-rate 1e-3 --cpus-per-worker 2 --student-threads 2 --clusters 12 \
    --eval-per-task 40 --iterations 2 --gate-tolerance 0.02 --out results/loop_iteration.json

# 8. The loop into the specialist tier, through the same Iteration: a base specialist distilled
#    on half of each train split, traffic from the other half, 5 seeds (resumable: rerun the same line).
$R bench loop --run-id specialist --student-tier specialist --specialist-base-share 0.5 --traffic-per-task 300 \
    --seeds 0 1 2 3 4 --budget 500 --top-cost-shares 0.4 --cpus-per-worker 2 --student-threads 2 --clusters 12 \
    --eval-per-task 200 --iterations 1 --gate-tolerance 0.02 --out results/loop_iteration_specialist.json
