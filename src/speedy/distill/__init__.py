"""Knowledge distillation: losses, the teacher cache and the trainer.

- ``teacher.teacher_cache_for``: one pass of a frozen teacher over the training split, storing the named
  per-example *signals* asked for (``logits`` today) in a :class:`~speedy.distill.cache.TeacherCache` keyed by the
  teacher's weights and the encoded inputs, with the teacher's identity in its ``meta.json``.
- ``losses.DistillationObjective``: ``alpha * CE(gold) + (1 - alpha) * sum_i weight_i * term_i``, each
  :class:`~speedy.distill.losses.KDTerm` a loss kind on one signal, averaged over the teachers given (one cache
  each); ``DistillationLoss`` is the paper's one-term case on rows.
- ``trainer.DistillationTrainer``: the Hugging Face ``Trainer`` whose ``compute_loss`` applies the objective.

Adding a KD signal (say ``hidden.<layer>``): in ``Task.row_dim`` give its width (from the teacher's config); in
each task's ``teacher_rows`` and ``kd_rows`` take that tensor (``outputs.hidden_states[layer]``) at the same
places as the logits (first sub-token of a word, a unit's sub-tokens); run the teacher, and the student in
``DistillationTrainer.compute_loss``, with ``output_hidden_states=True`` when a signal asks for it; add the loss
(with a learned projection, a ``KDTerm`` kind whose parameters the trainer's optimizer gets) to ``KD_FUNCTIONS``.
The cache needs no change: an existing cache gets the new signal added beside its ``logits``.

Adding a teacher: build its cache with ``teacher_cache_for`` over the same training split (its own tokenizer and
the objective's ``signals``) and pass every cache in ``teacher_caches``; each term is averaged over them.
"""
