"""Every MLflow tag name the service writes or reads: one place, so that a writer and a
reader can never spell a tag two ways.

A study is one parent run (role ``study``) with one child run per trial (role ``trial``)
and per final seed (role ``final``); a campaign (role ``campaign``) nests studies.
"""

from __future__ import annotations

PARENT = "mlflow.parentRunId"  # MLflow's own: nests a run under another
STUDY = "credit.study"  # the study's name, on each of its runs
ROLE = "credit.role"  # study | trial | final | campaign
TRIAL = "credit.trial_id"  # the Tune trial id of a trial's run
STATE = "credit.state"  # a trial run's end: COMPLETE | FAILED | PRUNED | STALE | LOST
FAILURE = "credit.failure"  # why a run failed, whole
FAILURE_KIND = "credit.failure_kind"  # infrastructure | trial
DRIVER = "credit.driver"  # host:pid:start of the process that runs the study
STATUS = "credit.status"  # a study's end: SUCCEEDED | FAILED | CANCELLED
BEST_RUN = "credit.best_run_id"
BEST_TRIAL = "credit.best_trial_id"
HOST, NODE_ID, NODE_IP = "credit.host", "credit.node_id", "credit.node_ip"  # where it ran
NODES = "credit.nodes"  # every node IP a trial ran on, in order (restarts add one)
RESTARTS = "credit.restarts"  # restarts after an infrastructure failure
RESTART_DELAY = "credit.restart_delay_s"  # its failure seen → training again (last restart)
EPOCHS_REDONE = "credit.epochs_redone"  # epochs trained again after the last restart
EXPERIMENT, RULE, SPACE = "credit.experiment", "credit.rule", "credit.space"
CAMPAIGN, PROTOCOL, ARMS = "credit.campaign", "credit.protocol", "credit.arms"
ARM, ARM_LABEL = "credit.arm", "credit.arm_label"
FIXED, REFERENCE = "credit.fixed", "credit.reference"
ERROR_PREFIX = "credit.error."  # + an arm's key: why that arm of a campaign failed
LABEL_PREFIX = "credit."  # + a key of a study's ``labels``
#: MLflow's own (its UI's "shared view"), on the experiment: + a key, the view's JSON
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."

#: The roles of runs.
STUDY_ROLE, TRIAL_ROLE, FINAL_ROLE, CAMPAIGN_ROLE = "study", "trial", "final", "campaign"
