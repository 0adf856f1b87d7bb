"""Where bfloat16 loses fidelity: an error budget of ``--precision bf16`` against float32.

For one model at the released size with every parameter perturbed by 0.05 N(0, 1) (weights far from
their initialisation, as in ``bench_speed.py``'s fidelity check), on a 4 s two-talker synthetic speech
mixture, it prints the SI-SNR of the output against the float32 output for:

* the bf16 path as shipped;
* the bf16 path with one region computed in float32 instead (the joint attention, the hidden and
  output projections, the depthwise convolutions): how much of the error each region causes;
* the float32 model with the weights of one parameter group rounded to bfloat16 (everything else
  exact): how much rounding the weights alone costs, group by group, and all weights together.

Errors add as powers: a region whose float32 run raises the SI-SNR from a to b dB removed
10^(-a/10) - 10^(-b/10) of the relative error power.

With ``--model-dir DIR`` the same budget is taken for a model directory's own weights (a trained
model: the quickstart's ``best_model``, a released checkpoint) instead of the perturbed ones.

    python bench/bench_bf16_fidelity.py --model mossformer
    python -m modelscope_mossformer.quickstart --out demo_out   # trains a small model on the demo corpus
    python bench/bench_bf16_fidelity.py --model-dir demo_out/train_dir/best_model
    python bench/bench_bf16_fidelity.py --model mossformer2 --num-blocks 4   # quicker, smaller
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from bench_speed import CONFIGS, LABELS, config_of, perturbed_copy, si_snr_db, speech_mixture  # bench/

from modelscope_mossformer.models import build_separator
from modelscope_mossformer.models import layers


def _float32_call(function: Callable) -> Callable:
    """`function` run with autocast off and its floating-point tensor arguments in float32."""
    def wrapped(*args, **kwargs):
        args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        with torch.autocast('cpu', enabled=False):
            return function(*args, **kwargs)
    return wrapped


@contextlib.contextmanager
def _patched(owner, name: str, replacement) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def _projection_in_float32(model: torch.nn.Module, which: str) -> Iterator[None]:
    """The GatedAttentionUnits' `which` projection (to_hidden or to_out) in float32."""
    projections = [getattr(m, which) for m in model.modules() if isinstance(m, layers.GatedAttentionUnit)]
    for projection in projections:  # instance attributes shadow the class's methods
        projection.scaled = _float32_call(type(projection).scaled.__get__(projection))
        projection.forward = _float32_call(type(projection).forward.__get__(projection))
    try:
        yield
    finally:
        for projection in projections:
            del projection.scaled, projection.forward


def _regions(model: torch.nn.Module) -> Dict[str, Callable[[], contextlib.AbstractContextManager]]:
    return {
        'joint attention in float32': lambda: _patched(layers, '_attention_dtype', lambda q, v: torch.float32),
        'hidden projection in float32': lambda: _projection_in_float32(model, 'to_hidden'),
        'output projection in float32': lambda: _projection_in_float32(model, 'to_out'),
        'depthwise convolutions in float32': lambda: _patched(layers, 'depthwise_conv_frames',
                                                              _float32_call(layers.depthwise_conv_frames)),
    }


def parameter_groups(model: torch.nn.Module) -> Dict[str, List[str]]:
    """Parameter names grouped by their role, the block index taken out ('attention.to_hidden.linear.weight')."""
    groups: Dict[str, List[str]] = {}
    for name, parameter in model.named_parameters():
        if parameter.numel() < 2 or not parameter.requires_grad:  # (the rotary frequencies stay float32)
            continue
        key = re.sub(r'^masker\.sequence\.layers\.\d+\.', '', name)
        groups.setdefault(key, []).append(name)
    return groups


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', choices=list(CONFIGS), default='mossformer')
    parser.add_argument('--seconds', type=float, default=4.0)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--num-blocks', type=int, default=None, help='default: the released 24')
    parser.add_argument('--model-dir', type=Path, default=None,
                        help='measure this model directory\'s weights instead of perturbed released-size ones')
    parser.add_argument('--no-weight-groups', action='store_true', help='skip the per-group weight rounding runs')
    parser.add_argument('--json', type=Path, default=None, help='also write the figures to this JSON file')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model_dir is not None:
        from modelscope_mossformer.model import load_model_dir

        loaded = load_model_dir(args.model_dir)
        model, rate = loaded.separator.eval(), loaded.sample_rate
        label, weights = f'{type(model).__name__} from {args.model_dir}', 'its own weights'
    else:
        model, rate = perturbed_copy(build_separator(config_of(args.model, args.num_blocks)).eval()), 8000
        label, weights = LABELS[args.model], 'weights + 0.05 N(0, 1)'
    speech = speech_mixture(args.seconds, rate)
    with torch.inference_mode():
        exact = model(speech)

    def bf16_db() -> float:
        with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
            return si_snr_db(model(speech).float(), exact)

    result: Dict[str, Any] = {'model': label, 'seconds': args.seconds, 'num_blocks': args.num_blocks,
                              'weights': weights}
    print(f'{label}, {args.seconds:g} s speech, {weights}: SI-SNR against float32')
    result['shipped_db'] = bf16_db()
    print(f'  {"bf16 path as shipped":<44} {result["shipped_db"]:6.2f} dB')
    result['regions_db'] = {}
    for label, region in _regions(model).items():
        with region():
            result['regions_db'][label] = bf16_db()
        print(f'  {"bf16, " + label:<44} {result["regions_db"][label]:6.2f} dB')
    if not args.no_weight_groups:
        result['rounded_weights_db'] = rounded_weights(model, speech, exact)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + '\n')
    return 0


def bf16_held(name: str) -> bool:
    """Whether --precision bf16 runs parameter `name` in bfloat16 (a GEMM's or convolution's operand)."""
    return (name.startswith('masker.sequence.layers.') and 'to_qk' not in name
            and any(part in name for part in ('linear.', 'conv.', 'project.')))  # ('conv.': dwconv, in_conv, ...)


def rounded_weights(model: torch.nn.Module, speech: torch.Tensor, exact: torch.Tensor) -> Dict[str, float]:
    """SI-SNR of the float32 model with all weights, then each group's, rounded to bfloat16."""
    state = {name: p.detach().clone() for name, p in model.named_parameters()}

    def rounded_db(names) -> float:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                parameter.copy_(state[name].bfloat16().float() if name in names else state[name])
        with torch.inference_mode():
            return si_snr_db(model(speech), exact)

    print('  float32 with these weights rounded to bfloat16:')
    groups = parameter_groups(model)
    figures = {'all weights': rounded_db({name for names in groups.values() for name in names})}
    print(f'    {"all weights":<42} {figures["all weights"]:6.2f} dB')
    # what a bf16 forward holds in bfloat16 whatever its arithmetic does: the blocks' GEMM and convolution
    # weights and biases outside the query/key path (norms, offset-scale, mask head and filterbanks stay float32)
    held = {name for names in groups.values() for name in names if bf16_held(name)}
    figures['weights bf16 holds'] = rounded_db(held)
    print(f'    {"weights bf16 holds (" + str(len(held)) + " tensors)":<42} {figures["weights bf16 holds"]:6.2f} dB')
    for key, names in groups.items():
        figures[key] = rounded_db(set(names))
        print(f'    {key:<42} {figures[key]:6.2f} dB')
    rounded_db(set())  # the weights as they were
    return figures


if __name__ == '__main__':
    sys.exit(main())
