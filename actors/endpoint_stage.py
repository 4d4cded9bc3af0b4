"""What a prompt needs on its endpoint's host before it is sent: the task's models pulled
(models by URL, docs/api.md §7.5; `comfy_fleet.prompts.model_pulls` holds the host's side) and
its image inputs uploaded, again at each dispatch (a requeued task's next host needs them too).
A pull that changed the host's files has the endpoint read its /object_info again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from comfy_fleet import errors
from comfy_fleet.log.task_state import TaskState
from comfy_fleet.prompts import inflight, model_pulls, render

if TYPE_CHECKING:
    from actors.endpoint import EndpointWorker


async def probe(worker: EndpointWorker) -> None:
    """After a connect: ask the host about models; tell the router at once when it changed
    (e.g. the extension was installed, or models were evicted by someone else)."""
    before = worker.models.status()
    await worker.models.probe()
    if worker.models.status() != before:
        worker._report(now=True)


async def prepare(worker: EndpointWorker, item: inflight.InflightPrompt, state: TaskState) -> bool:
    """Pull the task's models, then upload its inputs; False when the task cannot go on here
    (`pull`). Errors of the host or the store propagate to the caller, as a POST would."""
    if state.models and not await pull(worker, item, state):
        return False
    for spec in state.inputs:
        subfolder, _, name = str(spec["filename"]).rpartition("/")
        data = await worker.store.get(render.upload_key(spec))
        await worker.client.upload_image(data, name, subfolder)
    return True


async def pull(worker: EndpointWorker, item: inflight.InflightPrompt, state: TaskState) -> bool:
    """Pull the task's models onto the host (`model_pulls`); False when the task cannot go
    on here: then its failure (the model is at fault) or its requeue is recorded."""
    task_id, prompt_id = item.task_id, item.prompt_id
    in_use = {
        m["sha256"] for t in worker.table.by_task if t != task_id
        for m in getattr(worker.ledger.states.get(t), "models", ())
    }
    held = set(worker.models.held)
    try:
        fetched = await worker.models.pull(
            state.models, in_use=in_use, cache_bytes=worker.settings.model_cache_bytes,
            timeout_s=worker.settings.model_fetch_timeout_s,
            presign=lambda key: worker.store.presign_get(key, worker.settings.presign_expiry_s),
        )
    except errors.EndpointUnavailable as exc:
        # No prompt was sent: nothing for the reconciler to find; the task goes back now.
        worker.table.remove(prompt_id)
        await worker.ends.requeue(task_id, prompt_id, f"model_pull: {exc.message}")
        return False
    except model_pulls.PullProblem as exc:
        outcome = exc.outcome
        worker.table.remove(prompt_id)
        if outcome.verdict is model_pulls.Verdict.FAIL:
            error = {"code": outcome.code, "message": exc.message}
            ended = await worker.ends.fail(task_id, prompt_id, error)
            worker.ends.let_go(task_id, prompt_id, list(state.inputs), None, ended=ended)
        else:
            worker._report(now=True)  # e.g. no route here any more: route elsewhere
            await worker.ends.requeue(task_id, prompt_id, f"model_pull: {outcome.code}")
        return False
    if worker.models.held != held:
        # Files came onto the host (or were evicted): its loaders list them now, so the node
        # info (and the model files routing reads from it) is read again, off the prompt's path.
        worker._spawn(worker.server.refresh())
    if fetched:
        worker._report(now=True)
        await worker.ledger.decide(task_id, lambda s: list(fetched) if (
            s.prompt_id == prompt_id and not s.is_final) else [])
    return True
