"""The README's cluster quickstart, run as written: its one bash block, line by line, in a shell.

It installs the chart with its defaults (every namespace watched) as the release the suite's operator
uses, so the suite's own release is uninstalled first and put back afterwards."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from support import ROOT

pytestmark = pytest.mark.cluster


def quickstart() -> str:
    """The first ```bash block under the heading '## Quickstart on a cluster'."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Quickstart on a cluster\n", 1)
    assert len(section) == 2, "README.md has no '## Quickstart on a cluster' section"
    block = re.search(r"```bash\n(.*?)```", section[1], re.S)
    assert block, "the quickstart section has no bash block"
    return block.group(1)


def test_the_quickstart_block_names_the_steps_a_user_needs():
    script = quickstart()
    for step in ("make cluster-up", "make operator-image trainer-image", "helm install codex charts/codex-operator",
                 "kubectl apply -f configs/examples/tiny-cpu.yaml"):  # fmt: skip
        assert step in script, step


def test_the_readme_quickstart_runs_as_written(cluster, operator, trainer_image, operator_image):
    """The block as a user runs it: make targets (cached by now), helm install, the example's 300 steps in
    a pod, then the suite's release put back."""
    if os.environ.get("CODEX_KUBECONFIG") or os.environ.get("CODEX_CLUSTER_DIR"):
        pytest.skip("the quickstart uses the local cluster at .cluster/ (make cluster-up); this run uses another")
    if not hasattr(operator, "helm"):
        pytest.skip("the suite's operator runs as a process (CODEX_OPERATOR=process): nothing to hand over")
    operator.uninstall()  # the quickstart installs the release `codex` itself
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
    try:
        r = subprocess.run(["bash", "-euxo", "pipefail", "-c", quickstart()], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=1500)  # fmt: skip
        assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
        phase = cluster.kubectl("get", "ctj", "tiny-cpu", "-n", "default", "-o", "jsonpath={.status.phase}").stdout
        assert phase == "Succeeded"
        # and the commands the README's "Watching a job" names, with what it says they show
        watching = {
            "kubectl get ctj -o wide": "MESSAGE",
            "kubectl describe ctj tiny-cpu": "Succeeded",
            "kubectl logs job/tiny-cpu-a1": '"event": "done"',
        }
        readme = (ROOT / "README.md").read_text()
        for command, shows in watching.items():
            assert command in readme.replace("\n", " "), command
            setup = "export KUBECONFIG=$PWD/.cluster/kubeconfig PATH=$PWD/.cluster/bin:$PATH"
            out = subprocess.run(["bash", "-c", f"{setup}; {command}"], cwd=ROOT, env=env, capture_output=True,
                                 text=True, timeout=60)  # fmt: skip
            assert out.returncode == 0 and shows in out.stdout, (command, out.stdout[-2000:], out.stderr[-2000:])
    finally:
        cluster.kubectl("delete", "ctj", "tiny-cpu", "-n", "default", "--wait=false", check=False)
        operator.install()  # the suite's release again (helm upgrade --install, its own values)
