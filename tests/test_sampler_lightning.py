"""Mid-epoch resume through Lightning's checkpoint (the fit loop saves the StatefulDataLoader's state)."""

from __future__ import annotations

import pytest
import torch

from mixtures import Mixture, MixtureDataset
from mixtures.testing import SyntheticTask

SEQ = {"inputs": 24, "targets": 8}


def _run(tmp_path, max_steps, resume_from=None, num_workers=0):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torchdata.stateful_dataloader import StatefulDataLoader

    mix = Mixture("lt", [SyntheticTask("a", 17), SyntheticTask("b", 40), SyntheticTask("c", 9, supervised=False,
                                                                                         targets_length=(3, 20))])
    seen: list[torch.Tensor] = []

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, _):
            seen.append(batch["encoder_input_tokens"].clone())
            return (self.w * batch["decoder_loss_weights"].sum()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

        def train_dataloader(self):
            ds = MixtureDataset(mix, sequence_length=SEQ, batch_size=2, pack=True, seed=3, num_batches=8)
            return StatefulDataLoader(ds, batch_size=None, num_workers=num_workers)

    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1, filename="{step}")
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[ckpt], use_distributed_sampler=False,
                         num_sanity_val_steps=0)
    trainer.fit(Module(), ckpt_path=resume_from)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
def test_lightning_resume_mid_epoch_continues_exactly(tmp_path, num_workers):
    full = _run(tmp_path / "full", 8, num_workers=num_workers)
    assert len(full) == 8
    ckpt = tmp_path / "full" / "step=3.ckpt"
    assert ckpt.exists()
    resumed = _run(tmp_path / "resumed", 8, resume_from=str(ckpt), num_workers=num_workers)
    assert len(resumed) == 5
    for a, b in zip(resumed, full[3:]):
        assert torch.equal(a, b)
