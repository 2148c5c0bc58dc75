from django.urls import path

from automation import api

urlpatterns = [
    path("v1/automation/summary", api.automation_summary, name="automation-summary"),
    path("v1/automation/webhook", api.gitea_webhook, name="automation-webhook"),
]
