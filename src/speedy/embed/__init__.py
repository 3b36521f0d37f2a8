"""Sentence embeddings by distillation (the paper's next step: text similarity and semantic search).

* ``encoder``: the teacher, multilingual-e5-small used as its authors use it (mean pooling, L2-normalised,
  ``query: `` / ``passage: `` prefixes), and students built from it (its first layers spread, or a pruned
  vocabulary), all as sentence-transformers models, so a saved student loads with the library users already use.
* ``distill``: the teacher's vectors of unlabelled text, computed once and cached; a student learns them (MSE or
  cosine on the pooled vector) with early stopping on held-out text.
* ``static``: a static student (token vectors distilled from the teacher, PCA, weighted mean), model2vec style.
* ``retrieval``: question -> passage retrieval (exact, HNSW, BM25) and its IR metrics.
"""
