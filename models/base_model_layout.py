"""What the CNN and ViT pre-trained classes share for their base-model / task-model layout (shipped with saved model
code, as the modeling files import it)."""


class BaseModelLayoutMixin:
    """Put before `PreTrainedModel` in a family's pre-trained class.

    - `save_pretrained` writes the weights under the modules' own names (`<base_model_prefix>.*`, as in
      `state_dict()`) by default: the renamings the modeling files register for checkpoints of the earlier flat layout
      apply when loading; reversed on saving they would not give that layout back.
    - `init_weights` is skipped while a task model builds its base model (`_defer_weight_initialization`): the task
      model's `post_init` then initialises both in one pass, drawing the random numbers in the order of the modules,
      as a single flat model would; the base model initialising itself first would change every draw of the head's.
    """

    # Set while a task model builds its base model: the task model's `post_init` then initialises both in one pass.
    _defer_weight_initialization = False

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """`PreTrainedModel.save_pretrained`, by default with the weights under the modules' own names."""
        return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)

    def init_weights(self):
        """Initialise the weights, unless a task model is building this base model and will initialise it."""
        if not self._defer_weight_initialization:
            super().init_weights()
