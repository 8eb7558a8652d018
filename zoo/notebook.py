"""Helpers for notebooks (Colab TPU, GPU or CPU): what hardware is here, and a live progress bar and loss plot.

>>> info = describe_devices()
>>> info['platform'] in ('cpu', 'gpu', 'tpu') and info['count'] >= 1
True
"""
from __future__ import annotations

import os
import time

import jax


def describe_devices() -> dict:
  """Platform, device count and kind, process count, and the default data-parallel mesh."""
  devices = jax.devices()
  return {'platform': devices[0].platform, 'count': len(devices), 'kind': devices[0].device_kind,
          'processes': jax.process_count(), 'mesh': {'data': len(devices), 'fsdp': 1, 'tensor': 1}}


def default_workdir(name: str, drive_root: str = '/content/drive/MyDrive/zoo') -> str:
  """Google Drive when it is mounted in Colab (the run survives the session), else ./workdir/<name>."""
  if os.path.isdir('/content/drive/MyDrive'):
    return os.path.join(drive_root, name)
  return os.path.join('workdir', name)


class LiveProgress:
  """A `train_and_evaluate` callback: a tqdm progress bar (loss, speed) and a loss plot redrawn every
  `plot_every` seconds in the notebook. Keeps the history in `.steps`, `.losses`, `.eval` for later cells.

  >>> progress = LiveProgress(plot=False)
  >>> progress(1, {'loss': 5.0, 'total_steps': 2}); progress(2, {'loss': 4.0, 'total_steps': 2})
  >>> progress(2, {'eval_loss': 4.2}); progress.close()
  >>> progress.losses, progress.eval
  ([5.0, 4.0], [(2, 4.2)])
  """

  def __init__(self, plot: bool = True, plot_every: float = 5.0):
    self.plot, self.plot_every = plot, plot_every
    self.steps: list[int] = []
    self.losses: list[float] = []
    self.eval: list[tuple[int, float]] = []
    self._bar, self._last_plot, self._handle = None, 0.0, None

  def __call__(self, step: int, metrics: dict) -> None:
    if 'eval_loss' in metrics:
      self.eval.append((step, float(metrics['eval_loss'])))
      self._draw(force=True)
      return
    if 'loss' not in metrics:
      return
    if self._bar is None:
      from tqdm.auto import tqdm
      self._bar = tqdm(total=int(metrics.get('total_steps', 0)) or None, desc='training', unit='step')
    self._bar.update(step - (self.steps[-1] if self.steps else 0))
    self.steps.append(step)
    self.losses.append(float(metrics['loss']))
    post = {'loss': f"{metrics['loss']:.4f}"}
    if 'tokens_per_s' in metrics:
      post['tok/s'] = f"{metrics['tokens_per_s']:,.0f}"
    self._bar.set_postfix(post)
    self._draw()

  def _draw(self, force: bool = False) -> None:
    if not self.plot or (not force and time.time() - self._last_plot < self.plot_every):
      return
    self._last_plot = time.time()
    import matplotlib.pyplot as plt
    from IPython import display
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(self.steps, self.losses, label='train loss')
    if self.eval:
      ax.plot(*zip(*self.eval), 'o-', label='eval loss')
    ax.set(xlabel='step', ylabel='loss')
    ax.grid(alpha=0.3)
    ax.legend()
    if self._handle is None:
      self._handle = display.display(fig, display_id=True)
    else:
      self._handle.update(fig)
    plt.close(fig)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    self._draw(force=True)
