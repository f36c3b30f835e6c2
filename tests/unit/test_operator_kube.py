"""The operator's API calls (codex_operator.kube) against a fake API server on localhost: an error status
is an ApiException, as the handlers expect (409 on create: adopt the child; 404 on get: None; 422: the
job is invalid), although kubernetes_asyncio raises none for a call made with `_preload_content=False`;
what a reconcile makes of a refused write is in test_controller.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from fake_api import answering
from kubernetes_asyncio.client.rest import ApiException

from codex_operator.kube import Kube
from codex_operator.refusals import server_message

CONFIG_MAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "ns"}, "data": {}}


def status(code: int, message: str) -> dict[str, Any]:
    """A Status object, as the API server answers a refused request."""
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}


def against(code: int, body: dict[str, Any], call: Callable[[Kube], Awaitable[Any]]) -> Any:
    """Run `call` with a Kube whose API server answers every request with `code` and `body`."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(body, status=code)

    return serving(answer, call)


def serving(answer: Callable[[web.Request], Awaitable[web.Response]], call: Callable[[Kube], Awaitable[Any]]) -> Any:
    """Run `call` with a Kube whose API server answers each request as `answer` does."""
    return asyncio.run(answering(answer, call))


def test_create_returns_the_child_as_created_or_none_when_the_name_exists():
    assert against(201, CONFIG_MAP, lambda kube: kube.create(CONFIG_MAP)) == CONFIG_MAP
    assert against(409, status(409, "exists"), lambda kube: kube.create(CONFIG_MAP)) is None


def test_a_refused_child_is_an_api_exception_with_the_servers_message():
    with pytest.raises(ApiException) as e:
        against(422, status(422, 'ConfigMap "cm" is invalid'), lambda kube: kube.create(CONFIG_MAP))
    assert e.value.status == 422 and server_message(e.value.body, "") == 'ConfigMap "cm" is invalid'


def test_a_missing_child_is_none():
    assert against(404, status(404, "not found"), lambda kube: kube.get("ConfigMap", "ns", "cm")) is None
    assert against(200, CONFIG_MAP, lambda kube: kube.get("ConfigMap", "ns", "cm")) == CONFIG_MAP


def test_a_status_write_sends_its_preconditions_and_returns_the_job_as_written():
    job = {"apiVersion": "codex.ml/v1alpha1", "kind": "CodexTrainingJob", "metadata": {"name": "j", "uid": "u"}}
    sent: list[tuple[str, str, Any]] = []

    async def answer(request: web.Request) -> web.Response:
        sent.append((request.method, request.content_type, await request.json()))
        return web.json_response({**job, "status": {"phase": "Running"}})

    written = serving(answer, lambda kube: kube.patch_status("ns", "j", {"phase": "Running"}, "41", "u"))
    assert written == {**job, "status": {"phase": "Running"}}
    patch = {"status": {"phase": "Running"}, "metadata": {"resourceVersion": "41", "uid": "u"}}
    assert sent == [("PATCH", "application/merge-patch+json", patch)]
    with pytest.raises(ApiException) as e:  # written from an older view: the caller reads the job again
        against(409, status(409, "the object has been modified"), lambda kube: kube.patch_status("ns", "j", {}, "41"))
    assert e.value.status == 409
    assert against(404, status(404, "not found"), lambda kube: kube.get_job("ns", "j")) is None


def test_a_forbidden_list_raises_instead_of_reading_the_status_as_a_list():
    items = [{"metadata": {"name": "j-a1-0"}}]
    assert against(200, {"items": items}, lambda kube: kube.list_pods("ns", "a=b")) == items
    with pytest.raises(ApiException) as e:
        against(403, status(403, "forbidden"), lambda kube: kube.list_pods("ns", "a=b"))
    assert e.value.status == 403


def test_a_throttled_call_is_sent_again_after_the_servers_retry_after(monkeypatch):
    from codex_operator import kube as kube_module

    monkeypatch.setattr(kube_module.random, "uniform", lambda a, b: 0.0)
    answers = [429, 429, 201]

    async def answer(request: web.Request) -> web.Response:
        code = answers.pop(0)
        body = CONFIG_MAP if code == 201 else status(429, "too many requests")
        return web.json_response(body, status=code, headers={"Retry-After": "0"})

    assert serving(answer, lambda kube: kube.create(CONFIG_MAP)) == CONFIG_MAP and answers == []


def test_a_call_throttled_past_its_retries_is_refused_with_429(monkeypatch):
    from codex_operator import kube as kube_module

    monkeypatch.setattr(kube_module.random, "uniform", lambda a, b: 0.0)
    calls = []

    async def answer(request: web.Request) -> web.Response:
        calls.append(request.method)
        return web.json_response(status(429, "too many requests"), status=429, headers={"Retry-After": "0"})

    with pytest.raises(ApiException) as e:
        serving(answer, lambda kube: kube.get_job("ns", "j"))  # a call whose body the client reads itself
    assert e.value.status == 429 and len(calls) == kube_module.THROTTLE_RETRIES + 1


def test_the_error_count_of_a_call_is_exported_at_zero_before_any_error():
    """The chart's dashboard graphs codex_operator_api_errors_total by verb and kind: a call that never failed
    shows 0, not "No data"."""
    from prometheus_client import generate_latest

    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "ns"}}
    assert against(200, service, lambda kube: kube.get("Service", "ns", "s")) == service
    exported = generate_latest().decode()
    assert 'codex_operator_api_errors_total{kind="Service",verb="get"} 0.0' in exported, exported[-3000:]
