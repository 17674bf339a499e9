"""post-deployment-verification: runbook phase 3.

    check-health               step 7: /health and /api/health healthy, shown to serve the new SHA, and
                               holding so over the stability window ([health] stable_checks, stable_seconds)
    run-critical-path-tests    step 8: job scraping, AI analysis, document generation, email
    check-performance          step 9: metrics received; error rate and p95 within range and vs baseline
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from deployments.config import EnvironmentConfig
from tasks.health import HealthReport, check_health
from tasks.monitoring import Baseline, NotMeasured, Performance, check_performance
from tasks.smoke import SmokeReport, run_critical_path_tests


@dataclass(frozen=True)
class PostDeployment:
    health: HealthReport
    smoke: SmokeReport
    performance: Performance | NotMeasured


@flow(name="post-deployment-verification", flow_run_name="{config.name}: post-deployment verification")
def post_deployment_verification(config: EnvironmentConfig, sha: str, baseline: Baseline | None) -> PostDeployment:
    health = check_health(config, sha)
    smoke = run_critical_path_tests(config)
    performance = check_performance(config, baseline)
    return PostDeployment(health, smoke, performance)
