# Shared settings of the infra/gke scripts: `source infra/gke/env.sh` after editing, or export
# these before running a script. Defaults match infra/kubeflow.example.yaml.
export PROJECT="${PROJECT:-my-project}"
export REGION="${REGION:-us-central1}"
# A zone with both TPU v5e (ct5lp) and L4 GPUs; check `gcloud compute tpus accelerator-types
# list --zone=$ZONE` and `gcloud compute accelerator-types list --filter=zone:$ZONE`.
export ZONE="${ZONE:-us-central1-a}"
export CLUSTER="${CLUSTER:-deblur}"
export BUCKET="${BUCKET:-my-deblur-bucket}"
export REPO="${REPO:-deblur}"                        # Artifact Registry repository
export IMAGE="${IMAGE:-$REGION-docker.pkg.dev/$PROJECT/$REPO/deblur-pipeline:0.1.0}"
export GSA="${GSA:-deblur-pipeline}"                 # Google service account (name)
export KSA="${KSA:-deblur-pipeline}"                 # Kubernetes service account = kubeflow.service_account
export KFP_NAMESPACE="${KFP_NAMESPACE:-kubeflow}"
# KFP backend 2.5.0 (2025-04): its run form shows a default of 0 (2.0.5's treats 0 as missing and
# blocks Start until gate_input_psnr_tolerance is typed), and a recurring run may name the
# pipeline without a version, running its newest one (deblur submit --schedule). The kfp 2.5.0
# SDK's v2beta1 client talks to it (infra/README.md "Versions").
export KFP_VERSION="${KFP_VERSION:-2.5.0}"
export UI_GSA="${UI_GSA:-deblur-kfp-ui}"              # Google SA the KFP UI server reads gs:// as
export UI_KSA="${UI_KSA:-ml-pipeline-ui}"             # the KFP UI's Kubernetes service account
