"""Every command's contract (`data_prep.console`, `anime_gan.cli`): plain messages on stderr, exit 0 done,
2 a user error in one sentence, 1 the work ran but part failed, 130 Ctrl-C; never a traceback for those."""

import subprocess
import sys
import textwrap

import pytest

from helpers import ENV, REPO


def run_command(body, module="data_prep.console", run="console.run(main, user_errors=(ValueError,), "
                "failures=(RuntimeError,))"):
    """Runs `main` (body: its lines) the way the commands do, in a fresh process."""
    code = textwrap.dedent(f"""
        import logging
        from absl import app
        from {module.rsplit('.', 1)[0]} import {module.rsplit('.', 1)[1]}
        log = logging.getLogger("data_prep.example")

        def main(argv):
        """) + textwrap.indent(textwrap.dedent(body), "    ") + f"\n{run}\n"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("body, status, stderr", [
    ("log.info('made 3 things')\nlog.warning('one was odd')\nreturn 0", 0,
     ["made 3 things", "warning: one was odd"]),
    ("raise ValueError('--size=3 is below 8; pass 8 or more.')", 2, ["error: --size=3 is below 8; pass 8 or more."]),
    ("raise app.UsageError('unexpected arguments x; flags are written --name=value.')", 2,
     ["error: unexpected arguments x; flags are written --name=value."]),
    ("raise RuntimeError('the loss became NaN at step 7.')", 1, ["error: the loss became NaN at step 7."]),
    ("raise KeyboardInterrupt", 130, ["error: interrupted (Ctrl-C)."]),
])
def test_messages_and_exit_codes(body, status, stderr):
    proc = run_command(body)
    assert proc.returncode == status, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == stderr


def test_a_bug_keeps_its_traceback():
    proc = run_command("raise KeyError('a bug')")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "KeyError" in proc.stderr


@pytest.mark.parametrize("error, message, status", [
    ("DataError", "Folder x holds no usable images.", 2),
    ("TrainingStopped", "the loss is NaN at step 3.", 1),
])
def test_anime_gan_commands_map_data_errors_and_stopped_training(error, message, status):
    """anime_gan's commands: data_prep's DataError is a user error there too; a stopped run exits 1."""
    body = f"""
        from anime_gan.errors import TrainingStopped
        from data_prep import DataError
        raise {error}({message!r})
        """
    proc = run_command(body, module="anime_gan.cli", run="cli.run(main)")
    assert proc.returncode == status, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [f"error: {message}"]
