"""A small client for the parts of Gitea's REST API the automation uses.

One ``requests`` session per client, token auth (``Authorization: token ...``).
Reads retry with exponential backoff on connection errors, 429 and 5xx. A write
that is not idempotent is never retried blindly: a ``recover`` callback first
looks at the forge to see whether the write took effect (Kodiak's lesson about
merges). Lists are read through every page, at most 50 items a page, which is
Gitea's cap; ``X-Total-Count`` tells when to stop.

This module has no Django import so that scripts and tests can use it alone.
See ``../shared/gitea/README.md`` for the ways real Gitea differs from its spec.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

import requests

logger = logging.getLogger(__name__)

PAGE_LIMIT = 50
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_PAGES = 1000


class GiteaError(Exception):
    """A request to Gitea failed; ``status`` is the HTTP status or None when no answer came."""

    def __init__(self, message: str, *, status: int | None = None, method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.method = method
        self.path = path


class _Retriable(Exception):
    def __init__(self, reason: str, response: requests.Response | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response


def _segment(value: str | int) -> str:
    # Branch names contain "/": send them as one encoded path segment, which
    # Gitea's router unescapes (PathParam) and the spec's {branch} expects.
    return quote(str(value), safe="")


class GiteaClient:
    """Talks to one repository ``owner/name`` on one Gitea instance."""

    def __init__(
        self,
        base_url: str,
        repo: str,
        token: str,
        *,
        timeout: float = 15.0,
        retries: int = 3,
        backoff: float = 0.5,
        session: requests.Session | None = None,
    ) -> None:
        if "/" not in repo:
            raise ValueError(f"repository must be 'owner/name', got {repo!r}")
        self.base_url = base_url.rstrip("/")
        self.owner, self.name = repo.split("/", 1)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.session = session or requests.Session()
        self.session.headers.update(
            {"Authorization": f"token {token}", "Accept": "application/json", "User-Agent": "aitbc-automation"}
        )

    # ------------------------------------------------------------------ transport

    @property
    def repo_path(self) -> str:
        return f"/repos/{_segment(self.owner)}/{_segment(self.name)}"

    def _url(self, path: str) -> str:
        return f"{self.base_url}/api/v1{path}"

    def _send(self, method: str, path: str, *, params: dict | None, json: Any) -> requests.Response:
        try:
            response = self.session.request(method, self._url(path), params=params, json=json, timeout=self.timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Retriable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code in RETRY_STATUSES:
            raise _Retriable(f"HTTP {response.status_code}", response)
        return response

    def _sleep_before_retry(self, attempt: int, response: requests.Response | None) -> None:
        delay = self.backoff * (2**attempt)
        if response is not None and response.headers.get("Retry-After", "").isdigit():
            delay = max(delay, float(response.headers["Retry-After"]))
        time.sleep(min(delay, 30.0))

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        json: Any = None,
        expect: Iterable[int] = (200,),
        idempotent: bool | None = None,
        recover: Callable[[], Any] | None = None,
    ) -> requests.Response | Any:
        """Send one request; return the response when its status is in ``expect``.

        Idempotent requests (GET, PUT, PATCH, DELETE by default) are retried on
        transient failures. Other writes are retried only when ``recover`` is
        given: it runs after each transient failure and returns something other
        than None when the write turns out to have happened, which is then
        returned instead of a response.
        """
        expect = tuple(expect)
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "PUT", "PATCH", "DELETE")
        last: _Retriable | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep_before_retry(attempt - 1, last.response if last else None)
                if not idempotent and recover is not None:
                    recovered = recover()
                    if recovered is not None:
                        logger.info("gitea %s %s took effect before the failure; not retrying", method, path)
                        return recovered
            try:
                response = self._send(method, path, params=params, json=json)
            except _Retriable as exc:
                last = exc
                logger.warning("gitea %s %s failed (%s), attempt %d", method, path, exc.reason, attempt + 1)
                if not idempotent and recover is None:
                    break
                continue
            if response.status_code in expect:
                return response
            raise GiteaError(
                f"gitea {method} {path}: HTTP {response.status_code}: {_message(response)}",
                status=response.status_code,
                method=method,
                path=path,
            )
        status = last.response.status_code if last and last.response is not None else None
        raise GiteaError(
            f"gitea {method} {path}: {last.reason if last else 'failed'}", status=status, method=method, path=path
        )

    def get_json(self, path: str, *, params: dict | None = None, expect: Iterable[int] = (200,)) -> Any:
        return self.request("GET", path, params=params, expect=expect).json()

    def paginate(self, path: str, *, params: dict | None = None, max_pages: int = _MAX_PAGES) -> list[dict]:
        """Every item of a paginated list, page by page, ``limit`` capped at 50."""
        items: list[dict] = []
        page = 1
        while page <= max_pages:
            query = dict(params or {}, page=page, limit=PAGE_LIMIT)
            response = self.request("GET", path, params=query)
            batch = response.json() or []
            items.extend(batch)
            total = response.headers.get("X-Total-Count")
            if not batch or len(batch) < PAGE_LIMIT:
                break
            if total is not None and total.isdigit() and len(items) >= int(total):
                break
            page += 1
        return items

    # ------------------------------------------------------------------ issues and labels

    def list_issues(self, *, state: str = "open", labels: Iterable[str] = (), kind: str = "issues") -> list[dict]:
        """Issues in ``state`` carrying ALL of ``labels`` (Gitea joins once per label).

        Gitea drops label names it does not know, so a filter naming only unknown
        labels matches every issue: callers check the labels of what comes back.
        """
        params: dict[str, Any] = {"state": state, "type": kind}
        names = [name for name in labels if name]
        if names:
            params["labels"] = ",".join(names)
        return self.paginate(f"{self.repo_path}/issues", params=params)

    def list_issues_with_any_label(self, labels: Iterable[str], *, state: str = "open") -> list[dict]:
        """Open issues carrying at least one of ``labels``: one query per label, merged."""
        wanted = {name for name in labels if name}
        found: dict[int, dict] = {}
        for name in sorted(wanted):
            for issue in self.list_issues(state=state, labels=[name]):
                if issue.get("pull_request"):
                    continue
                if wanted & {label.get("name") for label in issue.get("labels") or []}:
                    found[issue["number"]] = issue
        return [found[number] for number in sorted(found)]

    def get_issue(self, number: int) -> dict:
        return self.get_json(f"{self.repo_path}/issues/{number}")

    def set_assignees(self, number: int, logins: list[str]) -> dict:
        # PATCH replaces the whole list (last write wins), so it is idempotent.
        response = self.request("PATCH", f"{self.repo_path}/issues/{number}", json={"assignees": logins}, expect=(201,))
        return response.json()

    def list_labels(self) -> list[dict]:
        return self.paginate(f"{self.repo_path}/labels")

    def list_assignees(self) -> list[dict]:
        """Users who can be assigned to issues (those with write access)."""
        return self.get_json(f"{self.repo_path}/assignees")

    # ------------------------------------------------------------------ comments

    def list_comments(self, number: int) -> list[dict]:
        # Gitea answers this one without pagination: every comment, oldest first.
        return self.get_json(f"{self.repo_path}/issues/{number}/comments")

    def create_comment(self, number: int, body: str) -> dict:
        def recover() -> dict | None:
            return next((c for c in self.list_comments(number) if c.get("body") == body), None)

        result = self.request(
            "POST", f"{self.repo_path}/issues/{number}/comments", json={"body": body}, expect=(201,), recover=recover
        )
        return result if isinstance(result, dict) else result.json()

    def edit_comment(self, comment_id: int, body: str) -> dict:
        response = self.request("PATCH", f"{self.repo_path}/issues/comments/{comment_id}", json={"body": body})
        return response.json()

    def delete_comment(self, comment_id: int) -> bool:
        """Delete a comment; False when it was already gone."""
        response = self.request("DELETE", f"{self.repo_path}/issues/comments/{comment_id}", expect=(204, 404))
        return response.status_code == 204

    # ------------------------------------------------------------------ branches

    def list_branches(self) -> list[dict]:
        return self.paginate(f"{self.repo_path}/branches")

    def get_branch(self, name: str) -> dict | None:
        response = self.request("GET", f"{self.repo_path}/branches/{_segment(name)}", expect=(200, 404))
        return response.json() if response.status_code == 200 else None

    def create_branch(self, name: str, *, from_ref: str) -> bool:
        """Create ``name`` from ``from_ref``; True on 201, False when it already exists (409).

        Two simultaneous creations can both get 201, so True is not a lock. When
        a failure leaves it unknown whether this request created the branch,
        an existing branch counts as not created: the caller must not believe
        it holds something it may not.
        """

        def recover() -> bool | None:
            return False if self.get_branch(name) is not None else None

        result = self.request(
            "POST",
            f"{self.repo_path}/branches",
            json={"new_branch_name": name, "old_ref_name": from_ref},
            expect=(201, 409),
            recover=recover,
        )
        if isinstance(result, bool):
            return result
        return result.status_code == 201

    def delete_branch(self, name: str) -> bool:
        """Delete a branch; False when it did not exist."""
        response = self.request("DELETE", f"{self.repo_path}/branches/{_segment(name)}", expect=(204, 404))
        return response.status_code == 204

    # ------------------------------------------------------------------ pull requests

    def list_pulls(self, *, state: str = "open", sort: str | None = None, max_pages: int = _MAX_PAGES) -> list[dict]:
        params: dict[str, Any] = {"state": state}
        if sort:
            params["sort"] = sort
        return self.paginate(f"{self.repo_path}/pulls", params=params, max_pages=max_pages)

    def get_pull(self, number: int) -> dict:
        return self.get_json(f"{self.repo_path}/pulls/{number}")

    def find_pull_by_branch(self, head: str, *, state: str = "open") -> dict | None:
        return next((pr for pr in self.list_pulls(state=state) if (pr.get("head") or {}).get("ref") == head), None)

    def pull_files(self, number: int) -> list[dict]:
        return self.paginate(f"{self.repo_path}/pulls/{number}/files")

    def create_pull(self, *, head: str, base: str, title: str, body: str = "") -> dict:
        def recover() -> dict | None:
            return self.find_pull_by_branch(head)

        result = self.request(
            "POST",
            f"{self.repo_path}/pulls",
            json={"head": head, "base": base, "title": title, "body": body},
            expect=(201,),
            recover=recover,
        )
        return result if isinstance(result, dict) else result.json()

    def request_reviewers(self, number: int, logins: list[str]) -> list[dict]:
        # Asking again for a reviewer already requested changes nothing: safe to retry.
        response = self.request(
            "POST",
            f"{self.repo_path}/pulls/{number}/requested_reviewers",
            json={"reviewers": logins},
            expect=(201,),
            idempotent=True,
        )
        return response.json()

    def list_reviews(self, number: int) -> list[dict]:
        return self.paginate(f"{self.repo_path}/pulls/{number}/reviews")

    def create_review(self, number: int, *, event: str, body: str, commit_id: str) -> dict:
        """Submit a review pinned to ``commit_id`` (APPROVED, REQUEST_CHANGES or COMMENT)."""

        def recover() -> dict | None:
            return next(
                (
                    r
                    for r in self.list_reviews(number)
                    if r.get("commit_id") == commit_id and r.get("body") == body and r.get("state") == event
                ),
                None,
            )

        result = self.request(
            "POST",
            f"{self.repo_path}/pulls/{number}/reviews",
            json={"event": event, "body": body, "commit_id": commit_id},
            expect=(200,),
            recover=recover,
        )
        return result if isinstance(result, dict) else result.json()

    def combined_status(self, ref: str) -> dict:
        """The combined status of ``ref`` with every status from every page.

        ``state`` is "" when there are no statuses at all: that is not success.
        """
        path = f"{self.repo_path}/commits/{_segment(ref)}/status"
        first = self.request("GET", path, params={"page": 1, "limit": PAGE_LIMIT})
        combined = first.json()
        statuses = list(combined.get("statuses") or [])
        total = combined.get("total_count") or 0
        page = 2
        while len(statuses) < total and page <= _MAX_PAGES:
            more = self.get_json(path, params={"page": page, "limit": PAGE_LIMIT}).get("statuses") or []
            if not more:
                break
            statuses.extend(more)
            page += 1
        combined["statuses"] = statuses
        return combined

    def is_merged(self, number: int) -> bool:
        response = self.request("GET", f"{self.repo_path}/pulls/{number}/merge", expect=(204, 404))
        return response.status_code == 204

    def merge_pull(self, number: int, *, style: str, head_commit_id: str, when_checks_succeed: bool = False) -> str:
        """Merge or schedule a merge; returns "merged", "scheduled", "not_allowed" or "conflict".

        Never retried blindly: after a failure without an answer or a 5xx the
        merge may have happened, so ``GET .../merge`` decides, and an unmerged
        PR is reported as an error for the next pass to look at again.
        """
        body: dict[str, Any] = {"Do": style, "head_commit_id": head_commit_id}
        if when_checks_succeed:
            body["merge_when_checks_succeed"] = True
        path = f"{self.repo_path}/pulls/{number}/merge"
        try:
            response = self.request("POST", path, json=body, expect=(200, 201, 405, 409), idempotent=False)
        except GiteaError as exc:
            if (exc.status is None or exc.status >= 500) and self.is_merged(number):
                return "merged"
            raise
        return {200: "merged", 201: "scheduled", 405: "not_allowed", 409: "conflict"}[response.status_code]

    def raw_file(self, filepath: str, *, ref: str) -> bytes | None:
        """A file's bytes at ``ref``, or None when it does not exist there."""
        path = f"{self.repo_path}/raw/{quote(filepath, safe='/')}"
        response = self.request("GET", path, params={"ref": ref}, expect=(200, 404))
        return response.content if response.status_code == 200 else None

    # ------------------------------------------------------------------ webhooks

    def list_hooks(self) -> list[dict]:
        return self.paginate(f"{self.repo_path}/hooks")

    def create_hook(self, *, url: str, secret: str, events: list[str]) -> dict:
        def recover() -> dict | None:
            return next((h for h in self.list_hooks() if (h.get("config") or {}).get("url") == url), None)

        body = {
            "type": "gitea",
            "active": True,
            "events": events,
            "config": {"url": url, "content_type": "json", "secret": secret},
        }
        result = self.request("POST", f"{self.repo_path}/hooks", json=body, expect=(201,), recover=recover)
        return result if isinstance(result, dict) else result.json()


def _message(response: requests.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])[:200]
    return response.text[:200]
