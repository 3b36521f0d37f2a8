#!/bin/bash
# The README's serving, int8 and embedding speed figures: run with nothing else on the CPU. The trial folders are
# those of runs/bench-recipes on the machine that measured them (benchmarks/recipes.py writes them).
set -x
cd /work/main
T=runs/bench-recipes/study/trials
TEACHER=$T/f77a0e92c5dce6efa9cf7cd6/model
S4=$T/1eb39c5ef84f1884b720dda7/model
S2=$T/42ecd18b79348a9d6745caf3/model
.venv/bin/speedy bench speed $TEACHER $S4 $S2 --engine torch --engine onnx --engine onnx-int8 --length 128 --threads 2 --runs 100 --warmup 10 --json runs/speed-128.json
cd benchmarks
../.venv/bin/python serving.py --config ../runs/bench-recipes/configs/transfer-2L-s1.yaml --student e5-2L --requests 400 --teacher-requests 200 --concurrency 8 --threads 2 --lean-venv /tmp/speedy-serve --out ../runs/serving.json
../.venv/bin/python embeddings.py --train-texts 3000 --epochs 5 --depths 2 4 --no-pruned --phase time --output /work/main/runs/bench-embed
cd ..
# the embedding task type's students through the pipeline (benchmarks/embedding_study.py writes the study)
.venv/bin/speedy measure runs/bench-embed-study/study.yaml
