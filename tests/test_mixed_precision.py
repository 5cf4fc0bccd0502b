"""bf16 on a CPU: the attention takes the path that is fast there (written out, or the fused kernel in fp32 for narrow
heads) and a training step stays within mixed precision's usual tolerance of the fp32 step; fp32 keeps torch's fused
kernel, so fp32 runs compute what they computed before. The optimizer's fused update only where it pays."""

import functools

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch.profiler import ProfilerActivity, profile

import models
from training.optimization import build_optimizer, fused_optimizer_pays, training_loss
from training.recipes import recipe_defaults

# (model, data set, channels, classes): the default recipe's geometry for each; BloodMNIST's ViT has heads of 16
# (the fused kernel in fp32), the others heads of 64 (written out).
GEOMETRIES = [("vit_lsa", "breastmnist", 1, 2), ("vit", "bloodmnist", 3, 8), ("vit_conv_lsa", "breastmnist", 1, 2),
              ("vit", "breastmnist", 1, 2)]
FUSED_KERNEL = "aten::_scaled_dot_product_flash_attention_for_cpu"


def default_model(name: str, dataset: str, channels: int, classes: int, **overrides):
    config = {**recipe_defaults("default", name, 28, dataset)["config_overrides"], "drop_path_rate": 0.0, **overrides}
    torch.manual_seed(0)
    return models.build_model(name, channels, classes, **config).train()


def loss_and_gradients(model, pixel_values, labels, bf16: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(pixel_values=pixel_values).logits
    loss = training_loss(logits, labels, multilabel=False, label_smoothing=0.1)
    loss.backward()
    return loss.detach().item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("name,dataset,channels,classes", GEOMETRIES)
def test_a_bf16_training_step_is_within_mixed_precision_tolerance_of_fp32(name, dataset, channels, classes):
    """A step's loss and gradient in bf16 against fp32, a few updates into training on images whose brightness
    tells the class (at initialisation the gradient is too small to compare): the loss within 5%, and the
    gradient no further from fp32's than bf16 autocast with transformers' eager attention (softmax in fp32) is,
    give or take half. bf16 gradients of these models differ from fp32's by 20-70% (relative norm) either way."""
    model = default_model(name, dataset, channels, classes)
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, classes, (64,), generator=generator)
    pixel_values = torch.randn(64, channels, 28, 28, generator=generator) * 0.5 + (labels / classes - 0.5).view(
        -1, 1, 1, 1) * 2
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(4):
        loss_and_gradients(model, pixel_values, labels, bf16=False)
        optimizer.step()
    loss32, gradient32 = loss_and_gradients(model, pixel_values, labels, bf16=False)
    loss16, gradient16 = loss_and_gradients(model, pixel_values, labels, bf16=True)
    model.set_attn_implementation("eager")
    _, eager16 = loss_and_gradients(model, pixel_values, labels, bf16=True)
    error = lambda gradient: ((gradient - gradient32).norm() / gradient32.norm()).item()  # noqa: E731
    assert abs(loss16 - loss32) <= 0.05 * loss32
    assert error(gradient16) <= 1.5 * error(eager16) + 0.02, (error(gradient16), error(eager16))


def kernels_run(model, pixel_values, bf16: bool) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(pixel_values=pixel_values).logits
        logits.float().sum().backward()
    return {event.key for event in profiler.key_averages()}


@pytest.mark.parametrize("bf16", [False, True])
def test_the_attention_takes_the_fast_path_for_its_precision(bf16):
    """Heads of 64: fp32 runs torch's fused kernel (as it always did), bf16 the written-out products, whose masked
    first product is one `baddbmm`."""
    model = default_model("vit_lsa", "breastmnist", 1, 2)
    kernels = kernels_run(model, torch.randn(4, 1, 28, 28), bf16)
    assert (FUSED_KERNEL in kernels) is not bf16
    assert ("aten::baddbmm" in kernels) is bf16


def test_narrow_heads_in_bf16_run_the_fused_kernel_in_fp32():
    """BloodMNIST's ViT (heads of 16) in bf16: the fused kernel, on fp32 inputs (its output is cast back)."""
    model = default_model("vit", "bloodmnist", 3, 8)
    seen = []
    attention = model.vit.layers[0].attention
    original = F.scaled_dot_product_attention

    def record(query, *args, **kwargs):
        seen.append(query.dtype)
        return original(query, *args, **kwargs)

    F.scaled_dot_product_attention = record
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output, _ = attention(torch.randn(2, 196, 128))
    finally:
        F.scaled_dot_product_attention = original
    assert seen == [torch.float32] and output.dtype == torch.bfloat16


def test_fp32_attention_is_torch_fused_kernel_bit_for_bit():
    """fp32 on a CPU computes exactly `scaled_dot_product_attention` of the block's queries, keys and values."""
    model = default_model("vit_lsa", "breastmnist", 1, 2).eval()
    attention = model.vit.layers[0].attention
    hidden_states = torch.randn(3, 49, 64)
    with torch.no_grad():
        output, _ = attention(hidden_states)
        q, k, v = attention._queries_keys_values(hidden_states)
        mask, scale = attention._mask_and_scale(49, hidden_states.device)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        expected = attention.output(context.transpose(1, 2).reshape(3, 49, -1))
    assert torch.equal(output, expected)


@pytest.mark.parametrize("tokens,head_dim", [(49, 64), (16, 16)])
def test_bf16_cpu_attention_is_the_masked_softmax(tokens, head_dim):
    """Both branches of the bf16 path (written out: heads of 64; fused in fp32: heads of 16) on queries and keys that
    attend mostly to themselves and values that are one-hot token numbers, so the output is the probabilities: as
    the eager fp32 ones within bf16 rounding, LSA's diagonal exactly 0, the scale applied."""
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 4, tokens, head_dim, generator=generator)
    queries = keys + 0.1 * torch.randn(2, 4, tokens, head_dim, generator=generator)
    values = torch.eye(tokens, head_dim).expand(2, 4, tokens, head_dim)
    mask = ~torch.eye(tokens, dtype=torch.bool)
    for attention_mask, scale in ((mask, 0.3), (None, 0.2)):
        expected = models.modeling_vit.eager_attention_probabilities(queries, keys, attention_mask, scale)
        context = models.modeling_vit.cpu_low_precision_attention(
            *(x.to(torch.bfloat16) for x in (queries, keys, values)), attention_mask, scale, 0.0)
        assert context.dtype == torch.bfloat16
        probabilities = context.float()[..., :tokens]
        torch.testing.assert_close(probabilities, expected, rtol=0.03, atol=0.01)
        diagonal = probabilities.diagonal(dim1=-2, dim2=-1)
        assert (diagonal == 0).all() if attention_mask is not None else diagonal.mean() > 0.2


@pytest.fixture
def fresh_accelerate_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.mark.parametrize("precision,fused", [("no", False), ("bf16", True)])
def test_the_fused_optimizer_update_is_used_in_mixed_precision_only_on_a_cpu(fresh_accelerate_state, precision,
                                                                              fused):
    """On a CPU, fp32 keeps the foreach update (fp32 results unchanged to the last bit); bf16 takes the fused one."""
    accelerator = Accelerator(cpu=True, mixed_precision=precision)
    assert fused_optimizer_pays(accelerator) is fused
    args = functools.partial(dict, optimizer="adamw", learning_rate=1e-3, weight_decay=0.05, momentum=0.9)()
    optimizer = build_optimizer(type("Args", (), args), torch.nn.Linear(4, 2), fused=fused_optimizer_pays(accelerator))
    assert all(bool(group["fused"]) is fused for group in optimizer.param_groups)


def test_the_bf16_advice_comes_from_rates_measured_on_this_cpu():
    """The start-up line names this CPU's bf16 instructions and the two rates it measured; bf16 "pays" exactly when
    its rate is the higher one (train.py warns otherwise)."""
    import re

    from training.hardware import cpu_bf16_advice, cpu_bf16_features

    pays, line = cpu_bf16_advice()
    bf16, fp32 = (float(x) for x in re.search(r": (\d+) GFLOP/s against (\d+) in fp32", line).groups())
    assert bf16 > 0 and fp32 > 0
    assert (", ".join(cpu_bf16_features()) or "neither AMX nor AVX-512 BF16") in line
    if abs(bf16 - fp32) >= 1:  # the line rounds; a tie within rounding could go either way
        assert pays is (bf16 > fp32)


@pytest.mark.parametrize("name", ["cnn", "vit_conv_lsa"])
@pytest.mark.parametrize("bf16", [False, True])
def test_max_pooling_runs_on_channels_last_memory_in_bf16_only(name, bf16):
    """bf16 on a CPU: the convolutional features reach every max-pool in channels-last memory (torch's fast CPU
    kernel for it); fp32: contiguous, as before. Either way the logits are the same function of the image."""
    channels, classes = 1, 2
    model = default_model(name, "breastmnist", channels, classes) if name != "cnn" else models.build_model(
        "cnn", channels, classes, image_size=28).train()
    layouts = []
    for module in model.modules():
        if isinstance(module, torch.nn.MaxPool2d):
            module.register_forward_hook(lambda _, inputs, __: layouts.append(
                (inputs[0].is_contiguous(memory_format=torch.channels_last), inputs[0].is_contiguous())))
    pixel_values = torch.randn(8, channels, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model.eval()(pixel_values=pixel_values).logits
    assert layouts and all(layout == ((True, False) if bf16 else (False, True)) for layout in layouts), layouts
    if bf16:
        with torch.no_grad():
            reference = model(pixel_values=pixel_values).logits
        torch.testing.assert_close(logits.float(), reference, rtol=0.05, atol=0.05 * reference.abs().max().item())
