"""The approval before a promotion (`[register] approval = "human"`), its answer kept for `decide`.

The standard provider's `ApprovalOperator`, with one change.

A Reject makes the provider skip the next task by raising, which ends the task before its return value
(the answer, who gave it) is stored: `decide` would then not know who rejected. `Approval` stores the
answer first, as the XCom `answer`: `{"choice": "Approve" | "Reject", "by": <user name, "" when nobody
answered in time and the default (Reject) was taken>}`.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

ANSWER = "answer"


class Approval(ApprovalOperator):
    """`ApprovalOperator` that keeps its answer (XCom `answer`) before it skips what follows a Reject."""

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        """Store the answer, then do what the provider does with it."""
        if "error" not in event:  # a timeout with no default, a broken event: the provider raises, nothing to keep
            self.validate_chosen_options(event["chosen_options"])
            user = event.get("responded_by_user") or {}
            answer = {"choice": event["chosen_options"][0], "by": user.get("name") or ""}
            context["ti"].xcom_push(key=ANSWER, value=answer)
        return super().execute_complete(context, event)
