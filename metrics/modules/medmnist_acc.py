"""MedMNIST ACC as a local `evaluate` module (load it by path: `evaluate.load("metrics/modules/medmnist_acc.py", "multi-class")`)."""

import evaluate

from .medmnist_definitions import check_inputs, check_task, get_acc, input_features

_DESCRIPTION = """
Accuracy exactly as MedMNIST's `Evaluator` (`medmnist.evaluator.getACC`) defines it. The configuration name is the
MedMNIST task: 'binary-class' (threshold 0.5 on the positive-class score), 'multi-class' and 'ordinal-regression'
(argmax), 'multi-label, binary-class' (mean over the labels of the accuracy at threshold 0.5).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: (N, K) class probabilities (softmax), or per-label probabilities (sigmoid) for multi-label.
        'binary-class' may pass only the positive-class column.
    references: (N,) class indices, or (N, L) 0/1 labels for 'multi-label, binary-class'.
Returns:
    acc: float in [0, 1].
Example:
    >>> acc = evaluate.load("metrics/modules/medmnist_acc.py", "binary-class")
    >>> acc.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 1])
    {'acc': 1.0}
"""

_CITATION = """
@article{medmnistv2,
    title={MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image classification},
    author={Yang, Jiancheng and Shi, Rui and Wei, Donglai and Liu, Zequan and Zhao, Lin and Ke, Bilian and Pfister,
            Hanspeter and Ni, Bingbing},
    journal={Scientific Data}, volume={10}, number={1}, pages={41}, year={2023}
}
"""


class MedmnistAcc(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=input_features(check_task(self.config_name)),
            reference_urls=["https://github.com/MedMNIST/MedMNIST/blob/main/medmnist/evaluator.py"],
        )

    def _compute(self, predictions, references):
        scores, labels = check_inputs(predictions, references, self.config_name)
        return {"acc": get_acc(scores, labels, self.config_name)}
