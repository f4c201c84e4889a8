"""Continuous retraining: enough new labels -> one cycle from the champion's weights -> register -> gate
-> promote on a pass. The service picks the new champion up when its alias poller sees the move.

``RetrainWatcher(config).run_once()`` does one check (and one retrain when due); ``watch()`` repeats it every
``retrain.poll_s`` seconds. A file lock (``<data_dir>/retrain/retrain.lock``) lets only one retrain run at a
time, across processes; labels posted during a run are counted from the sequence number the run started
at, so they queue the next run. State (``anomalymatch.retrain_state``) is written atomically before and
after every run; a failure is recorded with its error and leaves the champion serving.

Each retrain trains on every current label of the campaign's images (the store's ``current_labels``) minus
the registry's id-hashed holdout, and an unlabelled pool (a seeded sample of ``cycle.pool_sample`` of the
campaign's other images). The cycle run logs the labels it used (``labels/labels.csv`` plus the store's
view with user, time and comment), and its pool scores are written to the label store under the new
version, so ``select_candidates`` works for it as soon as it is promoted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import socket
import tempfile
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from anomalymatch.campaign_images import CampaignImages, campaign_images
from anomalymatch.config import AppConfig
from anomalymatch.embeddings import EmbeddingSet, embeddings_path
from anomalymatch.labelstore import LabelStore
from anomalymatch.retrain_state import RetrainStatus, evaluate, now_iso, read_state, state_path, write_state

log = logging.getLogger("anomalymatch.retrain")
LOCK_FILE = "retrain.lock"
WEIGHTS_ARTIFACT = "model/model.safetensors"  # written by training.active_learning.log_cycle on every cycle run
STORE_LABELS_ARTIFACT = "labels/labelstore_labels.csv"


@dataclass(frozen=True)
class RetrainOutcome:
    """What one ``run_once`` did. ``ran`` False: not due, or another retrain held the lock (``reason``)."""

    ran: bool
    reason: str
    version: str = ""
    promoted: bool = False
    gate: str = ""
    error: str = ""
    label_seq: int = 0
    run_id: str = ""  # the MLflow cycle run (its artifacts hold the labels used and the model)

    @property
    def failed(self) -> bool:
        return bool(self.error)


@contextlib.contextmanager
def retrain_lock(path: Path) -> Iterator[bool]:
    """An exclusive, non-blocking ``flock`` on ``path``: yields True when held (released on exit, and by
    the kernel if the process dies), False when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{socket.gethostname()}:{os.getpid()}\n".encode())
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class RetrainWatcher:
    """Retrains the champion on the label store's labels when enough new ones arrive."""

    def __init__(self, config: AppConfig, store: LabelStore | None = None, progress: bool = False) -> None:
        self.config = config
        self.store = store or LabelStore.from_config(config.labelstore, config.data_path)
        self.state_file = state_path(config.data_path)
        self.lock_file = self.state_file.parent / LOCK_FILE
        self.progress = progress

    def status(self) -> dict:
        """The status the service reports (idle / queued / running / failed, the last version, ...)."""
        return evaluate(read_state(self.state_file), self.store, self.config.retrain)

    # -- the loop ---------------------------------------------------------------------------------------------
    def watch(
        self,
        poll_s: float | None = None,
        stop: threading.Event | None = None,
        max_runs: int | None = None,
        parent_pid: int | None = None,
    ) -> int:
        """Check every ``poll_s`` seconds (default ``retrain.poll_s``) until ``stop`` is set, ``max_runs``
        retrains ran, or (with ``parent_pid``) the parent process is gone. Returns how many ran."""
        poll_s = poll_s or self.config.retrain.poll_s
        stop = stop or threading.Event()
        runs = 0
        log.info(
            "watching %s for new labels (retrain after %d, or %g min)",
            self.store.url,
            self.config.retrain.min_labels,
            self.config.retrain.max_wait_minutes,
        )
        while not stop.is_set():
            if parent_pid is not None and os.getppid() != parent_pid:
                log.info("parent process %d is gone: stopping", parent_pid)
                break
            try:
                outcome = self.run_once()
            except Exception as exc:  # e.g. the database is unreachable: report, keep watching
                log.error("retrain check failed: %s: %s", type(exc).__name__, exc)
            else:
                if outcome.ran:
                    runs += 1
                    log.info("%s", describe_outcome(outcome))
            if max_runs is not None and runs >= max_runs:
                break
            stop.wait(poll_s)
        return runs

    def run_once(self, force: bool = False) -> RetrainOutcome:
        """One check; one retrain when due (``force``: whenever there is at least one label)."""
        with retrain_lock(self.lock_file) as held:
            if not held:
                return RetrainOutcome(False, "another retrain is running; new labels stay queued for the next one")
            state = read_state(self.state_file)
            if state.status == RetrainStatus.RUNNING.value:  # we hold the lock, so its holder died mid-run
                state.status, state.failures = RetrainStatus.FAILED.value, state.failures + 1
                state.last_error = f"the retrain started at {state.started_at} by process {state.pid} was interrupted"
            state.watcher_seen_at = now_iso()
            state.trained_champion = self._champion_is_trained()
            report = evaluate(state, self.store, self.config.retrain)
            seq = self.store.last_seq()
            if seq == 0 or not (force or report["due"]):
                write_state(self.state_file, state)
                if seq == 0:
                    why = "no labels in the label store"
                elif report["waiting_for_anomalies"]:
                    why = f"not due: fewer than retrain.min_anomalies={self.config.retrain.min_anomalies} anomalies"
                else:
                    why = f"not due: {report['new_labels']} new label(s), need {self.config.retrain.min_labels}"
                return RetrainOutcome(False, why, label_seq=seq)
            reason = report["due"] or "forced"
            state.status, state.started_at, state.finished_at = RetrainStatus.RUNNING.value, now_iso(), ""
            state.attempted_seq, state.pid, state.host = seq, os.getpid(), socket.gethostname()
            write_state(self.state_file, state)
            log.info("retraining (%s) on labels up to #%d", reason, seq)
            try:
                outcome = self._retrain(seq, reason)
            except Exception as exc:  # the champion keeps serving; the error is reported in the status
                error = f"{type(exc).__name__}: {exc}"
                log.error("retrain failed, the champion keeps serving: %s\n%s", error, traceback.format_exc())
                state.status, state.last_error, state.failures = RetrainStatus.FAILED.value, error, state.failures + 1
                state.finished_at = now_iso()
                write_state(self.state_file, state)
                return RetrainOutcome(True, reason, error=error, label_seq=seq)
            state.status, state.last_error, state.runs = RetrainStatus.IDLE.value, "", state.runs + 1
            state.trained_seq, state.finished_at = seq, now_iso()
            state.last_version, state.last_promoted, state.last_gate = outcome.version, outcome.promoted, outcome.gate
            state.last_reason, state.last_run_id = outcome.reason, outcome.run_id
            write_state(self.state_file, state)
            return outcome

    def _champion_is_trained(self) -> bool:
        """Whether the registry's champion is a trained model (``retrain.min_anomalies`` applies until then)."""
        from anomalymatch.model_ref import resolve_tracking_uri
        from registry.store import mlflow_client, trained_champion

        client = mlflow_client(resolve_tracking_uri(self.config.tracking.tracking_uri, self.config.data_path))
        return trained_champion(client, self.config.tracking.registered_model)[1]

    # -- one retrain ------------------------------------------------------------------------------------------
    def _retrain(self, seq: int, reason: str) -> RetrainOutcome:
        import torch

        from anomalymatch.model_ref import resolve_tracking_uri
        from registry.promote import PromotionError, promote_to_champion
        from registry.store import mlflow_client, trained_champion
        from training.active_learning import run_tracked_cycle
        from training.tracking import RunTracker
        from training.trainer import FixMatchTrainer

        cfg = self.config
        campaign = campaign_images(self.store, cfg.retrain.campaign)
        tracking_uri = resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.data_path)
        name = cfg.tracking.registered_model
        champion, trained = trained_champion(mlflow_client(tracking_uri), name)
        # a cold-start champion ranks without training: the first FixMatch run starts from ImageNet weights
        start_from = champion if trained else None
        torch.manual_seed(cfg.cycle.seed)
        with tempfile.TemporaryDirectory(prefix="anomalymatch-retrain-") as tmp:
            model = self._start_model(campaign, start_from, tracking_uri, Path(tmp))
        inputs, labels = self._load_campaign(campaign, model.spec)
        images, ids, state = inputs.images, inputs.ids, inputs.state
        trainer = FixMatchTrainer(
            model, cfg.fixmatch, seed=cfg.cycle.seed, device=cfg.retrain.device, fresh_head=start_from is None
        )
        tracker = RunTracker(cfg.tracking, cfg.data_path)
        cycle_cfg = dataclasses.replace(cfg.cycle, cycles=1)
        register_cfg = cfg.replace(cycle=cycle_cfg, registry=dataclasses.replace(cfg.registry, auto_promote=False))
        tags = {
            "anomalymatch.kind": "retrain",
            "anomalymatch.label_seq": str(seq),
            "anomalymatch.parent_version": champion or "",
            "anomalymatch.retrain_reason": reason,
        }
        with tracker.parent_run(f"retrain-{campaign.name}", cfg.to_dict(), tags) as run_id:
            tracked = run_tracked_cycle(
                trainer=trainer,
                images=images,
                ids=ids,
                state=state,
                config=register_cfg,
                tracker=tracker,
                name=campaign.name,
                progress=self.progress,
                register=True,
                parent_version=champion or "",
                tags={"anomalymatch.label_seq": str(seq)},
                artifacts={STORE_LABELS_ARTIFACT: labels.to_csv_bytes()},
            )
        result, reg, cycle_run = tracked.result, tracked.registration, tracked.run_id
        self.store.add_scores(reg.version, [str(i) for i in ids[result.pool_idx]], result.pool_scores)
        if cfg.retrain.embeddings:  # the labelled images and the pool sample, as the exported model sees them
            try:
                EmbeddingSet.from_vectors([str(i) for i in ids], trainer.embed(images), reg.version).save(
                    embeddings_path(cfg.data_path, reg.version)
                )
            except (OSError, RuntimeError, ValueError) as exc:  # e.g. a full disk: the version stands without them
                log.warning("version %s: embeddings not stored (%s); 'similar' has none for it", reg.version, exc)
        promoted, why = False, f"gate {reg.gate.decision.value}: {reg.gate.reason}"
        if not reg.parity.passed:
            why = f"parity failed: {reg.parity.reason}"
        elif reg.gate.passed and cfg.registry.auto_promote:
            try:
                promoted = promote_to_champion(
                    reg.version, tracking_uri, name, reason=f"retrain: {why}", lock_timeout=cfg.registry.lock_timeout
                ).changed
            except PromotionError as exc:
                why = f"not promoted: {exc}"
        elif reg.gate.passed:
            why += " (registry.auto_promote is off: promote by hand)"
        log.info("run %s: version %s %s (%s)", run_id, reg.version, "promoted" if promoted else "not promoted", why)
        return RetrainOutcome(
            True, why, reg.version, promoted, reg.gate.decision.value, label_seq=seq, run_id=cycle_run
        )

    def _start_model(self, campaign: CampaignImages, champion: str | None, tracking_uri: str, tmp: Path):
        """The champion's weights (its cycle run's ``model/model.safetensors``), or a fresh model when there
        is no champion yet (ImageNet weights unless ``retrain.pretrained`` is off)."""
        from registry.store import get_version, mlflow_client
        from training.model import create_model, load_model

        if champion is None:
            spec = campaign.preprocess or self.config.preprocess
            weights = "ImageNet" if self.config.retrain.pretrained else "random"
            log.info("no trained champion yet: starting from %s weights", weights)
            return create_model(spec, pretrained=self.config.retrain.pretrained)
        client = mlflow_client(tracking_uri)
        run_id = get_version(client, self.config.tracking.registered_model, champion).run_id
        try:
            local = client.download_artifacts(run_id, WEIGHTS_ARTIFACT, str(tmp))
        except Exception as exc:  # MlflowException or OSError, depending on the artifact store
            raise RuntimeError(
                f"champion version {champion} has no {WEIGHTS_ARTIFACT} on its run {run_id} "
                f"({type(exc).__name__}: {exc}); retraining continues from the champion's weights, "
                "so register a version trained by AnomalyMatch first"
            ) from exc
        model = load_model(local)
        model.train()
        if campaign.preprocess is not None and campaign.preprocess != model.spec:
            log.warning(
                "campaign %s asks for preprocessing %s; the champion was trained with %s, which is used",
                campaign.name,
                campaign.preprocess.to_json(),
                model.spec.to_json(),
            )
        return model

    def _load_campaign(self, campaign: CampaignImages, spec):
        """The campaign's training input (current labels + pool sample, decoded) and the store's label table."""
        from anomalymatch.errors import TrainingInputError
        from anomalymatch.labels import LabelTable
        from training.inputs import assemble_training_input

        cfg = self.config
        current = self.store.current_labels()
        with campaign.open() as source:
            known = set(source.ids)
            keep = [k for k, i in enumerate(current.ids) if i in known]
            labels = LabelTable(
                tuple(current.ids[k] for k in keep),
                tuple(current.labels[k] for k in keep),
                {c: tuple(v[k] for k in keep) for c, v in current.extra.items()},
            )
            try:
                inputs = assemble_training_input(
                    labels=labels,
                    labelled_source=source,
                    pool_source=source,
                    spec=spec,
                    pool_sample=cfg.cycle.pool_sample,
                    seed=cfg.cycle.seed,
                    workers=cfg.workers,
                    progress=self.progress,
                )
            except TrainingInputError as exc:
                raise TrainingInputError(f"campaign {campaign.name}: {exc}") from None
        return inputs, labels


def describe_outcome(outcome: RetrainOutcome) -> str:
    if not outcome.ran:
        return f"no retrain: {outcome.reason}"
    if outcome.failed:
        return f"retrain on labels up to #{outcome.label_seq} FAILED (the champion keeps serving): {outcome.error}"
    return (
        f"retrained on labels up to #{outcome.label_seq}: version {outcome.version} "
        f"{'promoted to champion' if outcome.promoted else 'registered, not promoted'} ({outcome.reason})"
    )
