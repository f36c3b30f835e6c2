"""Names shared by the CRD, the operator and the trainer pods: one place, so they cannot drift.

The API group, version, kind and plural are the contract's (codex_trainer.contract, torch-free), re-exported
here so the operator spells them names.GROUP and so on."""

from __future__ import annotations

from codex_trainer.contract import DATA_DIR as DATA_DIR
from codex_trainer.contract import DEFAULT_MASTER_PORT
from codex_trainer.contract import GROUP as GROUP
from codex_trainer.contract import KIND as KIND
from codex_trainer.contract import PLURAL as PLURAL
from codex_trainer.contract import VERSION as VERSION

SINGULAR = "codextrainingjob"
SHORT_NAMES = ["ctj"]
CATEGORIES = ["codex"]
CRD_NAME = f"{PLURAL}.{GROUP}"

# The longest job name that leaves room for every child's name: pods are
# "<job>-a<attempt>-<index>-<5 random>" and the pod hostname "<job>-a<attempt>-<index>" must stay a
# 63-character DNS label with room for 3-digit attempts and indexes.
MAX_NAME_LENGTH = 40
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"  # a DNS-1035 label: the headless Service is named after it

LABEL_JOB = f"{GROUP}/job-name"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
LABEL_PRIORITY = "kueue.x-k8s.io/priority-class"  # a Kueue WorkloadPriorityClass
LABEL_KUEUE_JOB_UID = "kueue.x-k8s.io/job-uid"  # on a Kueue Workload: the UID of its Job
KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta2"
ANNOTATION_JOB_UID = f"{GROUP}/job-uid"  # on the checkpoint volume: the job it was made for (kept or not)
ANNOTATION_SPEC = f"{GROUP}/spec-sha256"  # on an attempt Job: what of the job's spec its pods were made from
ANNOTATION_LENGTH = f"{GROUP}/training-length"  # on an attempt Job: training.maxSteps/epochs it was started with
ANNOTATION_GENERATION = f"{GROUP}/generation"  # on an attempt Job: the job's metadata.generation it was made from
# on an attempt Job: the trainer image the operator chose for it (admission may rewrite the pod template's)
ANNOTATION_IMAGE = f"{GROUP}/image"

CONTAINER = "trainer"
CONFIG_MOUNT = "/etc/codex"
CONFIG_FILE = "job.yaml"
OUTPUT_DIR = "/checkpoints"
METRICS_PORT = 9400  # rank 0's Prometheus endpoint, unless spec.metrics.port says otherwise
MASTER_PORT = DEFAULT_MASTER_PORT
TERMINATION_LOG = "/dev/termination-log"
DEFAULT_IMAGE = "codex.local/codex-trainer:dev"


def pvc_name(job: str) -> str:
    return f"{job}-checkpoints"


def config_name(job: str, attempt: int) -> str:
    """Attempt N's job file: one immutable ConfigMap per attempt, so every rank of it reads the same file."""
    return f"{job}-a{attempt}-config"


def service_name(job: str) -> str:
    return f"{job}-workers"


def attempt_name(job: str, attempt: int) -> str:
    return f"{job}-a{attempt}"
