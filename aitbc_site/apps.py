from django.apps import AppConfig


class AitbcSiteConfig(AppConfig):
    name = "aitbc_site"
    verbose_name = "AITBC site"

    def ready(self) -> None:
        # Metrics: Celery task outcomes and job dispatch latency, counted where they happen.
        from celery import signals as celery_signals
        from django.db.models.signals import post_save

        from aitbc_site import metrics
        from automation import live
        from marketplace.models import JobEvent

        celery_signals.task_success.connect(metrics.on_task_success, dispatch_uid="aitbc-metrics-success")
        celery_signals.task_failure.connect(metrics.on_task_failure, dispatch_uid="aitbc-metrics-failure")
        celery_signals.task_retry.connect(metrics.on_task_retry, dispatch_uid="aitbc-metrics-retry")
        celery_signals.task_revoked.connect(metrics.on_task_revoked, dispatch_uid="aitbc-metrics-revoked")
        post_save.connect(metrics.on_job_event, sender=JobEvent, dispatch_uid="aitbc-metrics-dispatch")
        # Live dashboard events when claims, pull requests and runs change.
        live.connect()
