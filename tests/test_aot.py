"""Ahead-of-time compilation for a TPU topology on the CPU host (libtpu, no TPU): the plan's figures and the
exit status of `train.py --aot`."""
import json
import os
import subprocess
import sys

import pytest

from zoo import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip('libtpu', reason='libtpu (the [tpu] or [test] extra) compiles for TPUs on a CPU host')


def run_aot(workdir, tokenizer, topology, *overrides):
  cmd = [sys.executable, os.path.join(ROOT, 'train.py'), '--config=' + os.path.join(ROOT, 'configs/gpt.py:tiny'),
         f'--workdir={workdir}', f'--aot={topology}', f'--config.data.tokenizer={tokenizer}',
         '--config.train.batch_size=8', '--config.model.dropout_rate=0.0',
         '--config.model.num_layers=1', *overrides]  # one layer: half the TPU compile, and the plan's sums are the same
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_PLATFORMS', 'XLA_FLAGS')}
  return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_train_py_aot_plans_a_tiny_recipe_for_a_v5e_topology(tmp_path, tokenizer_path):
  out = run_aot(tmp_path, tokenizer_path, 'v5e:2x2', '--config.mesh.fsdp=4', '--config.mesh.data=1')
  assert out.returncode == 0, out.stderr[-3000:]
  plan = json.loads((tmp_path / 'aot.json').read_text())
  assert plan['chips'] == 4 and plan['hbm_gib_per_chip'] == 16.0 and plan['fits']
  assert plan['mesh'] == {'data': 1, 'fsdp': 4, 'tensor': 1}
  parts = plan['arguments_gib'] + plan['temporaries_gib'] + plan['outputs_gib']
  assert abs(plan['peak_gib_per_chip'] - parts) < 2e-3 and 0 < plan['peak_gib_per_chip'] < 1
  # model FLOPs per step = tokens x FLOPs per token; the predicted step time follows from v5e's 197 TFLOP/s
  assert plan['step_s_at_100_mfu'] == pytest.approx(plan['model_flops_per_step'] / (4 * 197e12), rel=1e-2)
  assert plan['step_s_at_50_mfu'] == pytest.approx(2 * plan['step_s_at_100_mfu'], rel=1e-2)
  assert 'peak per chip' in out.stdout and 'fits' in out.stdout
  # the state is sharded over fsdp: 4 chips hold a quarter of the parameters and moments each, not all of them
  replicated = run_aot(tmp_path / 'dp', tokenizer_path, 'v5e:2x2', '--config.mesh.data=4')
  assert replicated.returncode == 0, replicated.stderr[-3000:]
  dp = json.loads((tmp_path / 'dp' / 'aot.json').read_text())
  assert plan['arguments_gib'] < 0.5 * dp['arguments_gib']


@pytest.mark.slow
def test_a_step_that_does_not_fit_exits_with_its_own_status_and_names_fixes(tmp_path, tokenizer_path):
  out = run_aot(tmp_path, tokenizer_path, 'v5e:2x2', '--config.mesh.data=4', '--config.train.batch_size=512',
                '--config.train.seq_len=128', '--config.model.embed_dim=2048', '--config.model.mlp_dim=262144',
                '--config.model.num_heads=8')
  assert out.returncode == aot.EXIT_DOES_NOT_FIT, out.stderr[-3000:]
  plan = json.loads((tmp_path / 'aot.json').read_text())
  assert not plan['fits'] and plan['peak_gib_per_chip'] > 16
  assert any('mesh.fsdp' in f for f in plan['fixes']) and any('remat' in f for f in plan['fixes'])
  assert 'try' in out.stdout


def test_a_topology_name_is_checked():
  assert aot.parse_topology('v4:2x2x2')[1] == (2, 2, 2)
  with pytest.raises(ValueError, match='give a TPU topology as CHIP:SHAPE'):
    aot.parse_topology('v5e-8')
