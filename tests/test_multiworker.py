"""train(strategy=...): MirroredStrategy in-process, MultiWorkerMirroredStrategy on two processes.

Every distributed run is checked against SAM computed here on one device over the same global
batches (``epoch_order``): with ``sync_perturbations=True`` one ε from the global batch's gradient,
by default one ε per replica from its half of the batch (DATA sharding gives replica 0 the first
half; BatchNorm in training mode normalizes each half with its own statistics, in the reference
as on the replicas). Tolerance: float32 weights after a few SGD steps, where the all-reduce
adds the replicas' gradients in another order than one device's batch sum: rtol=1e-5 with
atol=1e-6 for entries near zero. The two perturbation modes differ by far more (asserted).
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from landscape import _distribute
from landscape._distribute import epoch_order, is_chief, parse_tf_config, resolve_strategy
from landscape.cli import main
from landscape.data import load_dataset
from landscape.models import build_model
from landscape.train import CheckpointEvery, checkpoint_paths, train
from sam import SAM, SAMModel

RTOL, ATOL = 1e-5, 1e-6
SEED, EPOCHS, BATCH, LR, RHO, CLASSES = 0, 2, 16, 0.1, 0.5, 3
HIDDEN = (8,)
WORKER_TIMEOUT = 180  # seconds from their start for both workers; they need ~30
REPO = pathlib.Path(__file__).resolve().parents[1]


def make_data(n_train=48, n_test=21):
    """Tiny 4x4 'images', 3 classes; 48 = 3 global batches of 16 (8 per replica)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n_train + n_test, 4, 4, 1)).astype("float32")
    y = rng.integers(0, CLASSES, size=n_train + n_test).astype("int64")
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def mlp(hidden=HIDDEN):
    return build_model("mlp", (4, 4, 1), CLASSES, hidden=hidden)


def cnn():
    """Conv(4 filters, no bias) -> BatchNorm(momentum 0.9) -> ReLU -> MaxPool -> softmax."""
    return build_model("cnn", (4, 4, 1), CLASSES, filters=(4,))


def trainable(model, weights):
    """The trainable part of ``model.get_weights()``-ordered ``weights``."""
    model.set_weights(weights)
    return [v.numpy() for v in model.trainable_variables]


def mean_loss(model, weights, x, y):
    """Training-mode loss at trainable ``weights`` (BatchNorm normalizes with x's statistics)."""
    state = [v.value for v in model.non_trainable_variables]
    y_pred, _ = model.stateless_call(weights, state, x, training=True)
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, y_pred))


def gradient(model, weights, x, y):
    weights = [tf.constant(w) for w in weights]
    with tf.GradientTape() as tape:
        tape.watch(weights)
        loss = mean_loss(model, weights, x, y)
    return [g.numpy() for g in tape.gradient(loss, weights)]


def sam_gradient(model, weights, x, y):
    """∇L(w + ε(w)), ε(w) = ρ g/‖g‖, both on this slice of the batch."""
    g = gradient(model, weights, x, y)
    norm = np.sqrt(sum(np.sum(gi.astype("float64") ** 2) for gi in g))
    perturbed = [(w + RHO * gi / norm).astype(w.dtype) for w, gi in zip(weights, g)]
    return gradient(model, perturbed, x, y)


def reference(model, w0, x, y, *, replicas):
    """Trainable weights after plain-SGD SAM over train()'s global batches, each batch cut into
    ``replicas`` slices that perturb with their own gradient (1: one ε per global batch)."""
    weights = trainable(model, w0)
    for epoch in range(EPOCHS):
        order = epoch_order(len(x), seed=SEED, epoch=epoch)
        for start in range(0, len(x), BATCH):
            parts = np.array_split(order[start : start + BATCH], replicas)
            grads = [sam_gradient(model, weights, x[p], y[p]) for p in parts]
            weights = [w - LR * np.mean(gs, axis=0) for w, *gs in zip(weights, *grads)]
    return weights


def single_process_fit(model, w0, x, y):
    """SAMModel's own step on one device (no strategy), over the same global batches."""
    model.set_weights(w0)
    model.compile(
        optimizer=SAM(keras.optimizers.SGD(LR, momentum=0.0), rho=RHO),
        loss="sparse_categorical_crossentropy",
    )
    for epoch in range(EPOCHS):
        order = epoch_order(len(x), seed=SEED, epoch=epoch)
        for start in range(0, len(x), BATCH):
            batch = order[start : start + BATCH]
            model.train_on_batch(x[batch], y[batch])
    return [v.numpy() for v in model.trainable_variables]


def max_relative_excess(actual, expected):
    """Largest |a - e| / (ATOL + RTOL |e|): <= 1 means within the tolerance."""
    return max(
        float(np.max(np.abs(a - e) / (ATOL + RTOL * np.abs(e)))) for a, e in zip(actual, expected)
    )


def assert_weights_close(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=RTOL, atol=ATOL)


def assert_weights_far(a, b):
    """The two perturbation modes must differ by much more than the tolerance."""
    assert max_relative_excess(a, b) > 100


def initial_weights(model, checkpoint_dir):
    first = checkpoint_paths(str(checkpoint_dir))[0]
    assert first.endswith("epoch_0000.weights.h5")
    model.load_weights(first)
    return model.get_weights()


def eval_loss(model, weights, x, y):
    """Mean cross-entropy in inference mode on one device, at all ``weights``."""
    model.set_weights(weights)
    y_pred = model(x, training=False)
    return float(tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, y_pred)))


def train_tiny(data, tmp_path, **kwargs):
    """train() with this file's settings (plain SGD inside SAM); checkpoints in tmp_path/ckpt."""
    settings = {
        "model": "mlp",
        "model_kwargs": {"hidden": HIDDEN},
        "optimizer": "sam",
        "epochs": EPOCHS,
        "batch_size": BATCH,
        "learning_rate": LR,
        "momentum": 0.0,
        "rho": RHO,
        "seed": SEED,
        "callbacks": [CheckpointEvery(str(tmp_path / "ckpt"))],
        "verbose": 0,
    }
    return train(data, **{**settings, **kwargs})


# -- MirroredStrategy on the two logical CPUs of conftest.py --------------------------------------


@pytest.mark.parametrize("sync", [True, False])
def test_mirrored_train_equals_single_device_sam(sync, tmp_path):
    (x, y), (xt, yt) = data = make_data()
    result = train_tiny(data, tmp_path, strategy="mirrored", sync_perturbations=sync)
    assert isinstance(result.strategy, tf.distribute.MirroredStrategy)
    assert result.strategy.num_replicas_in_sync == 2
    assert result.model.optimizer.sync_perturbations is sync
    assert len(checkpoint_paths(str(tmp_path / "ckpt"))) == EPOCHS + 1
    assert len(result.history["loss"]) == EPOCHS
    net = mlp()
    w0 = initial_weights(net, tmp_path / "ckpt")
    got = [v.numpy() for v in result.model.trainable_variables]
    synced = reference(net, w0, x, y, replicas=1)
    if sync:
        assert_weights_close(got, synced)
        assert_weights_close(got, single_process_fit(mlp(), w0, x, y))
    else:
        assert_weights_close(got, reference(net, w0, x, y, replicas=2))
        assert_weights_far(got, synced)
    # The final evaluation is over the whole split (21 test examples: 11 + 10 per replica).
    final = result.model.get_weights()
    assert result.train_loss == pytest.approx(eval_loss(net, final, x, y), rel=1e-5)
    assert result.test_loss == pytest.approx(eval_loss(net, final, xt, yt), rel=1e-5)
    assert result.save(str(tmp_path / "m.keras")) and (tmp_path / "m.keras").is_file()


def test_mirrored_batchnorm_statistics_are_averaged_over_replicas(tmp_path):
    """One step on one global batch of 16: replica r's BatchNorm sees rows 8r..8r+7 and moves
    its statistics by 0.1 of theirs; afterwards both replicas hold the average."""
    (x, y), test = make_data(n_train=BATCH)
    result = train_tiny(
        ((x, y), test), tmp_path, model="cnn", model_kwargs={"filters": (4,)}, epochs=1,
        strategy="mirrored",
    )  # fmt: skip
    net = cnn()
    net.set_weights(initial_weights(net, tmp_path / "ckpt"))
    conv = keras.Model(net.input, net.get_layer("conv_0").output)
    h = conv(x[epoch_order(BATCH, seed=SEED, epoch=0)]).numpy()
    halves = [h[: BATCH // 2], h[BATCH // 2 :]]
    mean = np.mean([part.mean(axis=(0, 1, 2)) for part in halves], axis=0)
    var = np.mean([part.var(axis=(0, 1, 2)) for part in halves], axis=0)
    bn = result.model.get_layer("bn_0")
    for variable, expected in ((bn.moving_mean, 0.1 * mean), (bn.moving_variance, 0.9 + 0.1 * var)):
        copies = result.strategy.experimental_local_results(variable.value)
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0].numpy(), copies[1].numpy())
        np.testing.assert_allclose(copies[0].numpy(), expected, rtol=RTOL, atol=ATOL)
    final = result.model.get_weights()  # evaluation and the saved model agree
    assert result.train_loss == pytest.approx(eval_loss(net, final, x, y), rel=1e-5)


# -- MultiWorkerMirroredStrategy: two worker processes on loopback ports --------------------------

WORKER = textwrap.dedent(
    """
    import json, os, sys

    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)

    from landscape.cli import main
    from landscape.data import load_dataset
    from landscape.train import CheckpointEvery, train

    out, results, data_path = sys.argv[1:4]
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    common = dict(epochs=2, batch_size=16, learning_rate=0.1, momentum=0.0, rho=0.5, seed=0)

    # 1. The command line, synchronized perturbations (what every worker of a cluster runs).
    main(
        ["train", "--model", "mlp", "--data", data_path, "--optimizer", "sam",
         "--strategy", "multi-worker", "--sync-perturbations", "--epochs", "2",
         "--batch-size", "16", "--lr", "0.1", "--momentum", "0", "--rho", "0.5", "--seed", "0",
         "--save-every", "1", "--out", os.path.join(out, "synced.keras"), "-q"],
        standalone_mode=False,
    )

    # 2. The library, per-replica perturbations (the default), a CNN with BatchNorm.
    result = train(
        load_dataset(data_path), model="cnn", optimizer="sam", model_kwargs={"filters": (4,)},
        strategy="multi-worker", verbose=0,
        callbacks=[CheckpointEvery(os.path.join(out, "per_replica_checkpoints"))], **common,
    )
    wrote = result.save(os.path.join(out, "per_replica.keras"))
    np.savez(
        os.path.join(results, f"worker{index}.npz"),
        *result.model.get_weights(),
        wrote=wrote,
        replicas=result.strategy.num_replicas_in_sync,
        epochs=len(result.history["loss"]),
        losses=[result.train_loss, result.test_loss],
    )
    """
)


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def _workers(request, tmp_path_factory):
    """Starts the two workers with the module's first test, so that they train while the
    in-process tests run; kills whatever is still running when the module is done."""
    wanted = any(
        "cluster" in item.fixturenames
        for item in request.session.items
        if item.module is request.module
    )
    if not wanted:
        yield None
        return
    root = tmp_path_factory.mktemp("multiworker")
    for name in ("out", "results", "tmp0", "tmp1"):  # tmp<i>: worker i's TMPDIR
        (root / name).mkdir()
    (train_part, test_part) = make_data()
    data_path = root / "data.npz"
    np.savez(
        data_path,
        x_train=train_part[0],
        y_train=train_part[1],
        x_test=test_part[0],
        y_test=test_part[1],
    )
    script = root / "worker.py"
    script.write_text(WORKER)
    addresses = [f"localhost:{free_port()}" for _ in range(2)]
    procs, logs = [], []
    try:
        for index in range(2):
            task = {"type": "worker", "index": index}
            env = dict(
                os.environ,
                TF_CONFIG=json.dumps({"cluster": {"worker": addresses}, "task": task}),
                TF_CPP_MIN_LOG_LEVEL="3",
                TF_ENABLE_ONEDNN_OPTS="0",
                KERAS_BACKEND="tensorflow",
                CUDA_VISIBLE_DEVICES="",
                TMPDIR=str(root / f"tmp{index}"),
                PYTHONPATH=str(REPO),
            )
            log = open(root / f"worker{index}.log", "w")  # noqa: SIM115 (closed in finally)
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(script), str(root / "out"), str(root / "results"),
                     str(data_path)],
                    cwd=root,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
        yield root, procs, time.monotonic() + WORKER_TIMEOUT
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def cluster(_workers):
    """Waits for both workers (with a deadline) and checks that they succeeded."""
    root, procs, deadline = _workers
    for proc in procs:
        proc.wait(timeout=max(deadline - time.monotonic(), 1))
    for index, proc in enumerate(procs):
        text = (root / f"worker{index}.log").read_text()
        assert proc.returncode == 0, f"worker {index} failed:\n{text[-4000:]}"
    return root


def files_under(directory):
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


@pytest.mark.slow
def test_only_the_chief_writes_files(cluster):
    checkpoints = [f"epoch_{e:04d}.weights.h5" for e in range(EPOCHS + 1)]
    expected = [
        "per_replica.keras",
        "per_replica_checkpoints",
        "synced.keras",
        "synced_checkpoints",
    ]
    expected += [f"per_replica_checkpoints/{c}" for c in checkpoints]
    expected += [f"synced_checkpoints/{c}" for c in checkpoints]
    assert files_under(cluster / "out") == sorted(expected)
    # Worker 1 saved into temporary directories, removed afterwards.
    assert files_under(cluster / "tmp1") == []
    chief, other = (np.load(cluster / "results" / f"worker{i}.npz") for i in range(2))
    assert bool(chief["wrote"]) and not bool(other["wrote"])
    assert int(chief["replicas"]) == int(other["replicas"]) == 2
    assert int(chief["epochs"]) == EPOCHS


@pytest.mark.slow
def test_multi_worker_synced_equals_single_process_sam(cluster):
    """The CLI run: SAM with all-reduced ε on 2 workers == SAM on one device, same batches."""
    (x, y), _ = load_dataset(str(cluster / "data.npz"))
    net = mlp(hidden=(128, 64))  # the CLI's MLP
    w0 = initial_weights(net, cluster / "out" / "synced_checkpoints")
    saved = keras.models.load_model(cluster / "out" / "synced.keras")
    got = [v.numpy() for v in saved.trainable_variables]
    single = single_process_fit(mlp(hidden=(128, 64)), w0, x, y)
    assert_weights_close(got, single)
    assert_weights_close(got, reference(net, w0, x, y, replicas=1))
    assert_weights_far(got, reference(net, w0, x, y, replicas=2))


@pytest.mark.slow
def test_multi_worker_default_perturbs_each_replica_with_its_own_gradient(cluster):
    """The library run (CNN with BatchNorm): each worker's ε, and its BatchNorm statistics in
    training mode, come from its half of every global batch."""
    (x, y), (xt, yt) = load_dataset(str(cluster / "data.npz"))
    net = cnn()
    w0 = initial_weights(net, cluster / "out" / "per_replica_checkpoints")
    workers = [np.load(cluster / "results" / f"worker{i}.npz") for i in range(2)]
    final = [workers[0][f"arr_{i}"] for i in range(len(w0))]
    for i, w in enumerate(final):  # one model: weights and BatchNorm statistics alike
        np.testing.assert_array_equal(w, workers[1][f"arr_{i}"])
    saved = keras.models.load_model(cluster / "out" / "per_replica.keras").get_weights()
    for a, b in zip(saved, final):
        np.testing.assert_array_equal(a, b)
    got = trainable(net, final)
    assert_weights_close(got, reference(net, w0, x, y, replicas=2))
    assert_weights_far(got, reference(net, w0, x, y, replicas=1))
    # Evaluation sums totals and counts over the workers: the global mean (test: 11 + 10).
    train_loss, test_loss = workers[0]["losses"]
    assert train_loss == pytest.approx(eval_loss(net, final, x, y), rel=1e-5)
    assert test_loss == pytest.approx(eval_loss(net, final, xt, yt), rel=1e-5)
    np.testing.assert_array_equal(workers[0]["losses"], workers[1]["losses"])


# -- bad input ------------------------------------------------------------------------------------

GOOD = {
    "cluster": {"worker": ["localhost:1", "localhost:2"]},
    "task": {"type": "worker", "index": 1},
}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("  ", "needs the TF_CONFIG environment variable"),
        ("{cluster: 1", "not valid JSON"),
        ("[]", "JSON object with 'cluster' and 'task'"),
        ({"cluster": {"worker": []}, "task": GOOD["task"]}, "non-empty lists of 'host:port'"),
        ({"cluster": {"worker": ["localhost"]}, "task": GOOD["task"]}, "'host:port'"),
        ({**GOOD, "cluster": {"ps": ["a:1"], "worker": ["b:1"]}}, "may only have the jobs"),
        ({**GOOD, "cluster": {"chief": ["a:1", "b:1"]}}, "at most one chief"),
        ({**GOOD, "task": {"type": "chief", "index": 0}}, "'type' among the cluster's jobs"),
        ({**GOOD, "task": {"type": "worker", "index": "0"}}, "integer 'index'"),
        ({**GOOD, "task": {"type": "worker", "index": 2}}, "index must be in [0, 2)"),
    ],
)
def test_malformed_tf_config_is_one_sentence(value, message):
    text = json.dumps(value) if isinstance(value, (dict, list)) else value
    with pytest.raises(ValueError) as info:
        parse_tf_config(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value) and str(info.value).endswith(".")


def test_good_tf_config_and_chief():
    assert parse_tf_config(json.dumps(GOOD)) == GOOD
    with_chief = {
        "cluster": {"chief": ["a:1"], "worker": ["b:1"]},
        "task": {"type": "chief", "index": 0},
    }
    assert parse_tf_config(json.dumps(with_chief)) == with_chief
    assert is_chief(None) and is_chief(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))


@pytest.mark.parametrize(
    ("jobs", "task", "chief"),
    [
        ({"worker": ["a:1", "b:1"]}, ("worker", 0), True),
        ({"worker": ["a:1", "b:1"]}, ("worker", 1), False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, ("chief", 0), True),
        ({"chief": ["c:1"], "worker": ["a:1"]}, ("worker", 0), False),
        ({}, (None, None), True),  # a MultiWorkerMirroredStrategy without a cluster
    ],
)
def test_the_chief_is_the_chief_task_or_else_worker_0(jobs, task, chief):
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(jobs), task_type=task[0], task_id=task[1]
    )
    strategy = mock.Mock(spec=tf.distribute.MultiWorkerMirroredStrategy, cluster_resolver=resolver)
    assert is_chief(strategy) is chief


@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        ({"strategy": "tpu"}, None, "Unknown strategy 'tpu'"),
        ({"strategy": 2}, None, "Unknown strategy 2"),
        ({"strategy": "multi-worker"}, None, "needs the TF_CONFIG environment variable"),
        ({"strategy": "multi-worker"}, '{"cluster": 1}', "JSON object with 'cluster' and 'task'"),
        ({"optimizer": "sgd", "sync_perturbations": True}, None, "applies to SAM and ASAM only"),
    ],
)
def test_train_rejects_bad_input(kwargs, env, message, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if env is not None:
        monkeypatch.setenv("TF_CONFIG", env)
    with pytest.raises(ValueError) as info:
        train(make_data(), model="mlp", epochs=1, verbose=0, **{"optimizer": "sam", **kwargs})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_multi_worker_after_tensorflow_started_is_a_clear_runtime_error(monkeypatch):
    """Once TensorFlow has run an operation, collective ops can no longer be set up."""
    assert float(tf.constant(1.0) + 1.0) == 2.0
    monkeypatch.setenv("TF_CONFIG", json.dumps(GOOD))
    with pytest.raises(RuntimeError, match="before TensorFlow runs any operation"):
        resolve_strategy("multi-worker")


def test_multi_worker_strategy_is_made_once_per_process(monkeypatch):
    """A second train(strategy="multi-worker") reuses the strategy; a new cluster is refused."""
    made = object()
    monkeypatch.setattr(_distribute, "_MULTI_WORKER", {json.dumps(GOOD): made})
    monkeypatch.setenv("TF_CONFIG", json.dumps(GOOD))
    assert resolve_strategy("multi-worker") is made
    other = {**GOOD, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(other))
    with pytest.raises(ValueError, match="TF_CONFIG cannot change within a process"):
        resolve_strategy("multi-worker")


def test_strategy_instances_and_defaults():
    assert resolve_strategy(None) is None and resolve_strategy("default") is None
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    assert resolve_strategy(one) is one
    assert resolve_strategy("mirrored").num_replicas_in_sync == 2


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--strategy", "multi-worker"], {"TF_CONFIG": None}, "needs the TF_CONFIG environment"),
        (["--strategy", "multi-worker"], {"TF_CONFIG": "{oops"}, "TF_CONFIG is not valid JSON"),
        (["--optimizer", "sgd", "--sync-perturbations"], {}, "applies to SAM and ASAM only"),
        (["--strategy", "tpu"], {}, "'tpu' is not one of 'default', 'mirrored', 'multi-worker'"),
    ],
)
def test_cli_bad_input_exits_2_with_one_sentence(args, env, message, tmp_path):
    result = CliRunner().invoke(
        main,
        ["train", "--model", "mlp", "--samples", "64", "--epochs", "1", "-q", *args,
         "--out", str(tmp_path / "m.keras")],
        env=env,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert message in result.output
    if args[-1] != "tpu":  # our own errors: one line, no traceback
        assert result.output.strip().count("\n") == 0
    assert not (tmp_path / "m.keras").exists()


def test_cli_help_shows_a_two_worker_example():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    for text in ("--strategy", "--sync-perturbations", "TF_CONFIG=", '"index": 0', "multi-worker"):
        assert text in result.output


def test_distributed_augmentation_changes_the_batches(tmp_path):
    """augment=True in the distributed pipeline: the same batches, flipped and shifted, so the
    run leaves the trajectory of the plain images (which the reference follows)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 6, 6, 3)).astype("float32")  # colour: flips and shifts
    y = rng.integers(0, CLASSES, size=32)
    result = train_tiny(((x, y), (x[:5], y[:5])), tmp_path, strategy="mirrored", augment=True)
    net = build_model("mlp", (6, 6, 3), CLASSES, hidden=HIDDEN)
    plain = reference(net, initial_weights(net, tmp_path / "ckpt"), x, y, replicas=2)
    got = [v.numpy() for v in result.model.trainable_variables]
    assert all(np.all(np.isfinite(w)) for w in got)
    assert_weights_far(got, plain)


def test_a_distributed_sgd_run_keeps_plain_keras_steps(tmp_path):
    """SGD under a strategy: the plain Keras train step (no SAM), one update per global batch."""
    (x, y), _ = data = make_data()
    result = train_tiny(data, tmp_path, optimizer="sgd", epochs=1, rho=None, strategy="mirrored")
    assert not isinstance(result.model, SAMModel)
    net = mlp()
    weights = trainable(net, initial_weights(net, tmp_path / "ckpt"))
    order = epoch_order(len(x), seed=SEED, epoch=0)
    for start in range(0, len(x), BATCH):
        batch = order[start : start + BATCH]
        weights = [w - LR * g for w, g in zip(weights, gradient(net, weights, x[batch], y[batch]))]
    assert_weights_close([v.numpy() for v in result.model.trainable_variables], weights)
