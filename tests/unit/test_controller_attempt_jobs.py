"""The controller in-process against a fake API server (controller_harness.py): attempt Jobs edited by hand
(`kubectl patch job NAME-aN`: scaled, suspended, resumed, split) are set back or replaced and said, and an
attempt that started no pod is made again when the operator's trainer image changes (the chart's
trainer.image). The rest of the unexpected is in test_controller.py."""

from __future__ import annotations

import copy

import pytest
from controller_harness import NAME, Cluster, reasons, scenario

from codex_operator.builders import Settings
from codex_operator.handlers import Operator, Options


def hand_edit(c: Cluster, n: int, **spec: object) -> None:
    """`kubectl patch job` on attempt n: its spec changes, and so its generation, as the API server does."""
    job = c.attempt(n)
    assert job is not None
    job["spec"] |= spec
    job["metadata"]["generation"] += 1
    c.api.put("jobs", job)


def job_edited(c: Cluster) -> list[str]:
    return [m for kind, r, m in c.events if r == "JobEdited" and kind == "Warning"]


@pytest.mark.parametrize("edit", ["parallelism", "suspend"])
def test_an_attempt_job_scaled_down_or_suspended_by_hand_is_set_back_and_said(edit):
    """Both stop the attempt's pods, while the job would go on saying Running. The operator owns its attempt
    Jobs: it puts them back as made, and says how to pause a job (runPolicy.suspend)."""

    async def test(c: Cluster) -> None:
        await c.apply("numNodes=2")
        await c.run(1, ready=2)
        assert c.attempt(1)["spec"]["parallelism"] == 2  # type: ignore[index]
        hand_edit(c, 1, **({"parallelism": 0} if edit == "parallelism" else {"suspend": True}))
        await c.settle()
        spec = c.attempt(1)["spec"]  # type: ignore[index]
        assert spec["parallelism"] == 2 and not spec["suspend"]
        (said,) = job_edited(c)
        words = (
            "parallelism was set to 0 by an edit of the Job: set back to 2"
            if edit == "parallelism"
            else ("was suspended by an edit of the Job, which stops its pods: resumed")
        )
        assert f"Job {NAME}-a1" in said and words in said and "start again from the newest checkpoint" in said
        assert "set spec.runPolicy.suspend: true on the CodexTrainingJob" in said
        assert c.attempt(2) is None and c.status()["attempt"] == 1
        await c.edit("runPolicy.suspend=true")  # the way to pause: suspended, and nothing said of it
        assert c.attempt(1)["spec"]["suspend"] and len(job_edited(c)) == 1  # type: ignore[index]
        hand_edit(c, 1, suspend=False)  # resumed by hand while the job says suspend
        await c.settle()
        assert c.attempt(1)["spec"]["suspend"] and c.status()["phase"] == "Suspended"  # type: ignore[index]
        assert "was resumed by an edit of the Job while runPolicy.suspend is true: suspended again" in job_edited(c)[-1]
        await c.edit("runPolicy.suspend=false")
        assert not c.attempt(1)["spec"]["suspend"] and len(job_edited(c)) == 2  # type: ignore[index]

    scenario(test)


def test_a_job_edited_then_suspended_and_resumed_goes_on_in_the_same_attempt():
    """runPolicy.suspend false resumes the current attempt, edited or not: its pods starting again are not an
    attempt that never ran (it would be replaced, a restart counted, and 'had started no pod' said)."""

    async def test(c: Cluster) -> None:
        await c.apply("training.maxSteps=1500")
        await c.run(1)
        await c.edit("training.maxSteps=1400")
        await c.edit("runPolicy.suspend=true")
        assert c.status()["phase"] == "Suspended"
        job = c.attempt(1)
        job["status"] = {}  # type: ignore[index]  # the Job controller deleted the pods
        c.api.put("jobs", job)  # type: ignore[arg-type]
        await c.edit("runPolicy.suspend=false")  # pods starting again: none ready yet
        assert not c.attempt(1)["spec"]["suspend"]  # type: ignore[index]
        st = c.status()
        assert c.attempt(2) is None and st["attempt"] == 1 and st["restarts"] == 0, st
        assert not [m for _, r, m in c.events if "had started no pod" in m]
        await c.run(1)
        assert c.status()["phase"] == "Running" and "Resumed" in reasons(c)

    scenario(test)


def test_a_view_of_the_attempt_job_from_before_the_operators_own_patch_is_not_taken_for_an_edit():
    """The watch may deliver a Job update written just before the operator's own suspend (the Job controller's
    status, say) after it: that older view says 'not suspended' while the job says Suspended. Nothing is said
    and nothing patched again."""

    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        before = copy.deepcopy(c.attempt(1))
        await c.edit("runPolicy.suspend=true")
        assert c.attempt(1)["spec"]["suspend"] and c.status()["phase"] == "Suspended"  # type: ignore[index]
        patches = c.api_calls("patch", "Job")
        await c.op.on_child_event("MODIFIED", before)  # the older view, delivered late
        assert not job_edited(c) and c.api_calls("patch", "Job") == patches
        assert c.attempt(1)["spec"]["suspend"] and c.status()["phase"] == "Suspended"  # type: ignore[index]

    scenario(test)


def test_a_multi_node_attempt_scaled_to_some_of_its_ranks_by_hand_is_replaced_as_a_disruption():
    """The ranks left cannot train without the others (and a rank started again cannot join them): the attempt
    is stopped and the next starts from the checkpoint, counted as a disruption, not against backoffLimit."""

    async def test(c: Cluster) -> None:
        await c.apply("numNodes=3", "runPolicy.backoffLimit=0")
        await c.run(1, ready=3)
        hand_edit(c, 1, parallelism=2)
        await c.settle()
        st = c.status()
        assert c.attempt(1) is None and c.attempt(2) is not None, st
        assert c.attempt(2)["spec"]["parallelism"] == 3  # type: ignore[index]
        assert st["phase"] == "Restarting" and st["disruptions"] == 1 and not st.get("crashes"), st
        assert "was scaled to 2 of its 3 pods by an edit of the Job" in st["message"], st
        assert [k for k, r, _ in c.events if r == "JobEdited"] == ["Warning"]
        hand_edit(c, 2, parallelism=5)  # more pods than ranks: set back, and no pod was stopped
        await c.settle()
        assert c.attempt(2)["spec"]["parallelism"] == 3  # type: ignore[index]
        said = job_edited(c)[-1]
        assert "set to 5 by an edit of the Job: set back to 3" in said and "start again" not in said

    scenario(test)


def test_an_attempt_stuck_on_the_charts_trainer_image_is_made_again_when_the_operator_gets_a_new_one():
    """The README's fix for an image that cannot be pulled, `helm upgrade --set trainer.image=...`: the operator
    restarts with the new image, and the job's attempt that started no pod is replaced by one with it (found by
    a new-user check on kind: it waited on the old image for good)."""

    async def test(c: Cluster) -> None:
        await c.apply()
        assert _image(c.attempt(1)) == "codex.local/codex-trainer:nope"
        c.op = Operator(  # helm upgrade: a new operator pod, which lists what is there
            Options(progress_via="proxy", settings=Settings(default_image="codex.local/codex-trainer:dev")),
            c.op.kube,
            post_event=lambda body, kind, reason, message: c.events.append((kind, reason, message)),
        )
        await c.op.on_child_event("ADDED", c.attempt(1))
        await c.op.on_job_event("ADDED", c.job())
        await c.settle()
        st = c.status()
        assert c.attempt(1) is None and _image(c.attempt(2)) == "codex.local/codex-trainer:dev"
        assert st["phase"] == "Pending" and st["attempt"] == 2, st
        assert ("Normal", "ImageChanged") in [e[:2] for e in c.events]
        await c.run(2)
        assert c.status()["phase"] == "Running"

    scenario(test, settings=Settings(default_image="codex.local/codex-trainer:nope"))


def test_an_image_rewritten_by_admission_is_not_taken_for_a_new_trainer_image():
    """A mutating webhook (an image-verifying policy pinning tags to digests, a registry mirror) rewrites the
    attempt Job's image: the operator compares the image it chose, not the one stored, so it does not replace
    the attempt again and again (found by a review: attempts 1 to 9 and an ImageChanged Event each)."""

    async def test(c: Cluster) -> None:
        create = c.api._create

        def pinned(plural: str, ns: str, obj: dict):
            if plural == "jobs":
                for container in obj["spec"]["template"]["spec"]["containers"]:
                    container["image"] += "@sha256:" + "a" * 64
            return create(plural, ns, obj)

        c.api._create = pinned  # type: ignore[method-assign]
        await c.apply()
        assert _image(c.attempt(1)).endswith("@sha256:" + "a" * 64)
        assert c.status()["attempt"] == 1 and c.attempt(2) is None and "ImageChanged" not in reasons(c)

    scenario(test, settings=Settings(default_image="codex.local/codex-trainer:dev"))


def _image(attempt_job: dict) -> str:
    return attempt_job["spec"]["template"]["spec"]["containers"][0]["image"]
