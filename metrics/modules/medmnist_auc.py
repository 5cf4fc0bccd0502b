"""MedMNIST AUC as a local `evaluate` module (load it by path: `evaluate.load("metrics/modules/medmnist_auc.py", "multi-class")`)."""

import evaluate

from .medmnist_definitions import check_inputs, check_task, get_auc, input_features

_DESCRIPTION = """
ROC AUC exactly as MedMNIST's `Evaluator` (`medmnist.evaluator.getAUC`) defines it. The configuration name is the
MedMNIST task: 'binary-class' (AUC of the positive-class score), 'multi-class' and 'ordinal-regression' (mean
one-vs-rest AUC over the classes), 'multi-label, binary-class' (mean of the per-label AUCs). NaN when a class has only
positive or only negative samples, as scikit-learn and medmnist give.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: (N, K) class probabilities (softmax), or per-label probabilities (sigmoid) for multi-label.
        'binary-class' may pass only the positive-class column.
    references: (N,) class indices, or (N, L) 0/1 labels for 'multi-label, binary-class'.
Returns:
    auc: float in [0, 1], or NaN where undefined.
Example:
    >>> auc = evaluate.load("metrics/modules/medmnist_auc.py", "binary-class")
    >>> auc.compute(predictions=[[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], references=[0, 1, 1])
    {'auc': 1.0}
"""

_CITATION = """
@article{medmnistv2,
    title={MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image classification},
    author={Yang, Jiancheng and Shi, Rui and Wei, Donglai and Liu, Zequan and Zhao, Lin and Ke, Bilian and Pfister,
            Hanspeter and Ni, Bingbing},
    journal={Scientific Data}, volume={10}, number={1}, pages={41}, year={2023}
}
"""


class MedmnistAuc(evaluate.Metric):
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
        return {"auc": get_auc(scores, labels, self.config_name)}
