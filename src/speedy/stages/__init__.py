"""The study's stages, in order; each is a module with ``run(study)`` that reads the previous stages' results
from the experiment store and writes its own, so any stage can be run (or resumed) alone.

finetune (grid over teacher candidates) -> select (lowest validation loss) -> distill (students, with the teacher
cache; optionally also without KD) -> evaluate (test split) -> measure (size, speed) -> report (tables, figures).
"""

from speedy.stages import distill, evaluate, finetune, measure, report, select

STAGES = {"finetune": finetune.run, "select": select.run, "distill": distill.run, "evaluate": evaluate.run,
          "measure": measure.run, "report": report.run}
