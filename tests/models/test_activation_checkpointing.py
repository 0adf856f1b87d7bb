"""Activation checkpointing recomputes blocks in the backward pass and changes no number."""
import pytest
import torch

from modelscope_mossformer.models import MossFormer, MossFormer2

from ..conftest import tiny_mossformer, tiny_mossformer2


def _loss_and_grads(model: torch.nn.Module, mix: torch.Tensor, seed: int):
    torch.manual_seed(seed)  # dropout draws
    model.zero_grad()
    loss = model(mix).pow(2).mean()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('family', ['mossformer', 'mossformer2'])
def test_checkpointed_training_step_gives_the_same_loss_and_gradients(family):
    model = MossFormer(tiny_mossformer()) if family == 'mossformer' else MossFormer2(tiny_mossformer2())
    model.train()  # dropout on: the recomputation must replay the same dropout masks
    mix = torch.randn(2, 1600, generator=torch.Generator().manual_seed(3))
    assert model.activation_checkpointing is False
    plain_loss, plain_grads = _loss_and_grads(model, mix, seed=7)
    model.activation_checkpointing = True
    loss, grads = _loss_and_grads(model, mix, seed=7)
    assert torch.equal(loss, plain_loss)
    assert grads.keys() == plain_grads.keys() and len(grads) > 20
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-7, rtol=1e-5, msg=name)
    # inference ignores the switch
    with torch.inference_mode():
        model.eval()
        assert model(mix).shape == (2, model.num_spks, 1600)
