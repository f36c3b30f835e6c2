PYTHON ?= python3

.PHONY: deps install test lint unit bench example sample-data lock lock-upgrade lock-check audit secrets

deps:               ## Debian packages for the images and the kind test cluster (root): Docker is its one dependency
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		docker.io debootstrap gcc libc6-dev patch >/dev/null

install:            ## the locked dependencies (every file hash-checked), then the project itself, editable
	$(PYTHON) -m pip install --require-hashes -r requirements/build.txt
	$(PYTHON) -m pip install --require-hashes -r requirements/dev.txt
	$(PYTHON) -m pip install --no-deps --no-build-isolation -e .

test: lint          ## what CI runs: lint, then every test, with the trainer's and the operator's coverage (floor in pyproject.toml)
	$(PYTHON) -m pytest --cov --cov-report=term

lint:               ## ruff, and mypy over trainer/ and operator/
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

unit:               ## the fast tests only
	$(PYTHON) -m pytest -m "not slow and not spawns and not cluster"

bench:              ## throughput against the Hugging Face Trainer and TRL, and a step's memory (see benchmarks/README.md)
	$(PYTHON) benchmarks/trainer_throughput.py
	$(PYTHON) benchmarks/trainer_throughput.py --example configs/examples/tiny-cpu.yaml --steps 100
	$(PYTHON) benchmarks/loss_memory.py

example:            ## the main job on this machine
	codex-train run configs/examples/tiny-cpu.yaml

sample-data:        ## regenerate the shipped sample data (deterministic)
	$(PYTHON) configs/data/make_sample.py

# ---- the supply chain (tools/): locks, known vulnerabilities, secrets; .ci/run runs the last three

lock:               ## requirements/*.txt from pyproject.toml (keeps the versions already locked), with hashes
	$(PYTHON) tools/lock.py

lock-upgrade:       ## the same, with the newest versions pyproject.toml allows
	$(PYTHON) tools/lock.py --upgrade

lock-check:         ## fails when the locks disagree with pyproject.toml or with what `make lock` writes now
	$(PYTHON) tools/lock.py --check

audit:              ## pip-audit over the locks: fails on a known vulnerability (accepted ones: requirements/audit-ignore.toml)
	$(PYTHON) tools/audit.py

secrets:            ## gitleaks over the whole history and the tree: fails on a finding
	$(PYTHON) tools/secret_scan.py

# ---- the test cluster: kind, with a node image made here (tests/cluster), and the end-to-end suite

.PHONY: cluster-up cluster-down cluster-status kueue kueue-down e2e

cluster-up:         ## build kind and its node image (cached), create the cluster (a control plane, two workers); prints the KUBECONFIG
	$(PYTHON) tests/cluster/cluster.py up

cluster-down:       ## delete it: its node containers and volumes
	$(PYTHON) tests/cluster/cluster.py down

cluster-status:
	$(PYTHON) tests/cluster/cluster.py status

kueue:              ## Kueue v0.17.0 onto the running test cluster: built from the Go module proxy (cached), its own manifests; MANAGE_ALL=1 for manageJobsWithoutQueueName
	$(PYTHON) tests/cluster/kueue.py install $(if $(MANAGE_ALL),--manage-jobs-without-queue-name)

kueue-down:         ## remove it: the queue objects first, then Kueue (cluster-down removes it with the rest)
	$(PYTHON) tests/cluster/kueue.py uninstall

e2e:                ## the integration/e2e suite on the kind cluster (created here when not up, deleted after)
	$(PYTHON) -m pytest tests/integration

# ---- the CRD, generated from the spec models (codex_trainer/spec.py)

.PHONY: crds

crds:               ## regenerate crds/codextrainingjobs.codex.ml.yaml and the chart's templates/crd.yaml from the spec models
	$(PYTHON) -m codex_operator.crd

# ---- the images (Dockerfile.trainer, Dockerfile.operator), built without a registry (images/build.py)

.PHONY: trainer-image operator-image

trainer-image:      ## download the wheelhouse (once per set of pins), build codex.local/codex-trainer:dev, load it into the test cluster if up
	$(PYTHON) images/build.py trainer

operator-image:     ## the same for codex.local/codex-operator:dev (no torch; about 200 MB)
	$(PYTHON) images/build.py operator

# ---- operator latency at scale (benchmarks/operator_latency.py): kwok fakes the nodes and pods

KWOK_VERSION ?= v0.8.0

.PHONY: bench-operator

bench-operator:     ## N jobs at once against the test cluster (up): create→Job, create→Running, RSS, writes per job
	test -x .cluster/bin/kwok || GOBIN=$(CURDIR)/.cluster/bin go install sigs.k8s.io/kwok/cmd/kwok@$(KWOK_VERSION)
	$(PYTHON) benchmarks/operator_latency.py --jobs 100 --readme
	$(PYTHON) benchmarks/operator_latency.py --jobs 1000 --readme

# ---- Helm, for the chart (charts/codex-operator): built from the Go module proxy into .tools/bin, once

HELM_VERSION ?= v3.22.0
# stamped in as Helm's release build does (its Makefile's LDFLAGS), so `helm version` names the release and
# lint and template assume the Kubernetes of its client-go (k8s.io/client-go v0.37 in v3.22.0's go.mod)
HELM_K8S_MINOR ?= 37
HELM := $(CURDIR)/.tools/bin/helm
HELM_LDFLAGS := -s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(HELM_K8S_MINOR) \
	-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$(HELM_K8S_MINOR)

.PHONY: helm

helm:               ## .tools/bin/helm at HELM_VERSION, built unless it is there already (cold: about 4 minutes)
	@if [ "$$($(HELM) version --template '{{.Version}}' 2>/dev/null)" = "$(HELM_VERSION)" ]; then \
		echo "$(HELM) $(HELM_VERSION) (cached)"; \
	else \
		echo "building helm $(HELM_VERSION) into .tools/bin (go install from the module proxy)"; \
		GOBIN=$(CURDIR)/.tools/bin GOFLAGS= go install -ldflags '$(HELM_LDFLAGS)' helm.sh/helm/v3/cmd/helm@$(HELM_VERSION); \
	fi
