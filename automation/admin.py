from __future__ import annotations

import json

from django import forms
from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from automation import sealing, services
from automation.models import AutomationConfig, Claim, JobLease, PullRequestState, Run, WebhookDelivery


class AutomationConfigForm(forms.ModelForm):
    gitea_url = forms.URLField(required=False, assume_scheme="https", help_text="Base URL of Gitea, without /api/v1.")
    # Write-only: the admin never renders a stored secret, not even sealed.
    new_token = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Leave blank to keep the current token. Stored sealed with a key derived from SECRET_KEY.",
    )
    clear_token = forms.BooleanField(required=False, help_text="Forget the stored token (fall back to the file/env).")
    new_webhook_secret = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False), help_text="Leave blank to keep the current one."
    )
    clear_webhook_secret = forms.BooleanField(required=False)

    class Meta:
        model = AutomationConfig
        fields = "__all__"

    def clean_repo(self) -> str:
        repo = self.cleaned_data["repo"].strip()
        if repo and (repo.count("/") != 1 or not all(repo.split("/"))):
            raise forms.ValidationError("Use owner/name.")
        return repo

    def clean_eligible_labels(self) -> list[str]:
        return _string_list(self.cleaned_data["eligible_labels"])

    def clean_protected_paths(self) -> list[str]:
        return _string_list(self.cleaned_data["protected_paths"])


def _string_list(value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise forms.ValidationError('A JSON list of strings, e.g. ["task", "bug"].')
    return [item.strip() for item in value if item.strip()]


@admin.register(AutomationConfig)
class AutomationConfigAdmin(admin.ModelAdmin):
    form = AutomationConfigForm
    list_display = ["__str__", "gitea_url", "lock_backend", "claim_enabled", "monitor_enabled", "auto_merge"]
    readonly_fields = ["token_status", "webhook_secret_status", "problems", "updated_at"]
    fieldsets = [
        (
            "Gitea",
            {"fields": ["gitea_url", "repo", "base_branch", "token_status", "new_token", "clear_token", "token_file"]},
        ),
        ("Agents", {"fields": ["agent", "sibling_agent"]}),
        (
            "claim-task",
            {"fields": ["claim_enabled", "eligible_labels", "max_claims_per_run", "lock_backend", "git_remote"]},
        ),
        ("monitor-prs", {"fields": ["monitor_enabled", "protected_paths", "auto_merge", "merge_style"]}),
        ("Webhook", {"fields": ["webhook_secret_status", "new_webhook_secret", "clear_webhook_secret"]}),
        ("State", {"fields": ["problems", "updated_at"]}),
    ]

    @admin.display(description="token")
    def token_status(self, obj: AutomationConfig) -> str:
        if obj.token_encrypted:
            return sealing.mask(obj.token_encrypted)
        if obj.token_file:
            return f"read from {obj.token_file}"
        return "from GITEA_TOKEN / GITEA_TOKEN_FILE" if services.config_token(obj) else "not set"

    @admin.display(description="webhook secret")
    def webhook_secret_status(self, obj: AutomationConfig) -> str:
        return (
            sealing.mask(obj.webhook_secret_encrypted)
            if obj.webhook_secret_encrypted
            else ("from GITEA_WEBHOOK_SECRET" if services.config_webhook_secret(obj) else "not set")
        )

    @admin.display(description="problems")
    def problems(self, obj: AutomationConfig) -> str:
        return "; ".join(services.config_problems(obj)) or "none"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return not AutomationConfig.objects.exists()

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change) -> None:
        obj.pk = services.CONFIG_PK
        super().save_model(request, obj, form, change)
        data = form.cleaned_data
        if data.get("clear_token"):
            services.config_set_token(config=obj, token=None)
        elif data.get("new_token"):
            services.config_set_token(config=obj, token=data["new_token"].strip())
        if data.get("clear_webhook_secret"):
            services.config_set_webhook_secret(config=obj, secret=None)
        elif data.get("new_webhook_secret"):
            services.config_set_webhook_secret(config=obj, secret=data["new_webhook_secret"].strip())


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Claim)
class ClaimAdmin(ReadOnlyAdmin):
    list_display = ["issue_number", "title", "status", "agent", "winner", "work_branch", "updated_at"]
    list_filter = ["status", "lock_backend"]
    search_fields = ["title", "work_branch", "=issue_number"]

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        # Deleting a stuck claim's record lets the next pass look at the issue afresh.
        return True


@admin.register(PullRequestState)
class PullRequestStateAdmin(ReadOnlyAdmin):
    list_display = ["number", "title", "author", "role", "state", "ci_state", "verdict", "updated_at"]
    list_filter = ["role", "state", "verdict", "ci_state"]
    search_fields = ["title", "author", "=number"]


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ["started_at", "job", "trigger", "dry_run", "status", "action_count", "short_error"]
    list_filter = ["job", "status", "trigger", "dry_run"]
    readonly_fields = ["job", "trigger", "dry_run", "status", "started_at", "finished_at", "actions_table", "error"]
    exclude = ["actions"]

    @admin.display(description="actions")
    def action_count(self, obj: Run) -> int:
        return len(obj.actions or [])

    @admin.display(description="error")
    def short_error(self, obj: Run) -> str:
        return (obj.error or "")[:80]

    @admin.display(description="what it did and why")
    def actions_table(self, obj: Run) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.actions, indent=2))


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["received_at", "event", "action", "queued_job", "delivery_id"]
    list_filter = ["event", "queued_job"]


@admin.register(JobLease)
class JobLeaseAdmin(ReadOnlyAdmin):
    list_display = ["name", "holder", "expires_at"]
