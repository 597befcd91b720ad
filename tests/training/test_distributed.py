"""tf.distribute: a 2-replica mirrored step equals a 1-replica step on the same global batch; two
local workers of MultiWorkerMirroredStrategy train to equal weights."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, STYLE, env, make_tiny_dataset, tiny_args


@pytest.mark.slow  # ~40 s: a subprocess building and tracing two models
def test_two_replica_mirrored_step_equals_one_replica_step():
    r = subprocess.run([sys.executable, str(REPO / "tests" / "distributed_check.py")], cwd=REPO, env=env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for k, diff in out["loss_diff"].items():
        # Losses are means over the global batch either way; only the summation order differs.
        assert diff <= 1e-5 * max(1.0, abs(out["losses"][k])), (k, diff)
    assert out["max_weight_diff"] <= 1e-5
    # ...and the step moved the weights far beyond that tolerance.
    assert out["max_trainable_update"] > 1e-3


def test_xla_with_mirrored_cpu_devices_is_refused_in_one_sentence(tmp_path):
    # XLA cannot read a variable placed on another CPU device (its known issue), so the 2-replica
    # XLA step fails deep inside TensorFlow; train() says so before any work starts.
    data = make_tiny_dataset(tmp_path / "data", n_photo=4, n_style=4)
    r = subprocess.run([sys.executable, str(REPO / "tests" / "distributed_check.py"), "xla", str(data), STYLE],
                       cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    error = json.loads(r.stdout.strip().splitlines()[-1])["error"]
    assert not (tmp_path / "data" / "never-written").exists()
    assert error == ("--jit_compile does not work with --strategy=mirrored on CPU devices (XLA cannot read a "
                     "variable placed on another CPU device); drop one of the two.")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_local_workers_train_to_equal_weights(tmp_path):
    data = make_tiny_dataset(tmp_path / "data", n_photo=8, n_style=8)
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    script = (
        "import sys, numpy as np\n"
        "from absl import flags\n"
        "import anime_gan.train as cli\n"
        "from anime_gan.training.loop import train\n"
        "cli.define_flags()\n"
        "flags.FLAGS(['x'] + sys.argv[2:])\n"
        "res = train(cli.config_from_flags())\n"
        "m = res.model\n"
        "np.savez(sys.argv[1], *[v.numpy() for v in m.generator.weights + m.discriminator.weights])\n"
    )
    procs = []
    for i in range(2):
        e = env()
        e["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        args = tiny_args(data, str(tmp_path / "ckpt"), strategy="multi_worker", epoch=2, init_epoch=1,
                         steps_per_epoch=2, batch_size=2, checkpoint_every_steps=1)
        procs.append(subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"w{i}.npz"), *args],
                                      cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert len(w0.files) == len(w1.files) > 0
    for k in w0.files:
        np.testing.assert_array_equal(w0[k], w1[k])
    # The chief wrote the metrics and the checkpoints; the other worker's scratch copy is gone.
    records = [json.loads(line) for line in open(tmp_path / "ckpt" / "logs" / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert not any(n.startswith(".worker_") for n in os.listdir(tmp_path / "ckpt"))
