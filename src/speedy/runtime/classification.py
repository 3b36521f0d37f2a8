"""Classification of a text or a pair of texts, served without torch: the label, its probability and every
label's."""

from __future__ import annotations

from speedy.runtime.base import RuntimeTask, softmax
from speedy.runtime.fields import InputField


class ClassificationRuntime(RuntimeTask):
    type = "classification"
    route, route_help = "/classify", "Classify each text (or pair of texts)."
    inputs = {"text": InputField("The text."),
              "text_pair": InputField("Classification of pairs: the second text.", required=False)}
    results = {"label": str, "score": float, "scores": dict[str, float]}
    min_labels = 2

    @staticmethod
    def input_item(fields: dict):
        return fields["text"], fields.get("text_pair")

    def predict(self, runner, tokenizer, items, max_length):
        encodings = tokenizer.encode_batch([text if pair is None else (text, pair) for text, pair in items],
                                           max_length=max_length)
        results = []
        for outputs in runner.run(encodings):
            row = softmax(outputs["logits"].astype("float32"))
            best = int(row.argmax())
            results.append({"label": self.labels[best], "score": float(row[best]),
                            "scores": {label: float(p) for label, p in zip(self.labels, row)}})
        return results
