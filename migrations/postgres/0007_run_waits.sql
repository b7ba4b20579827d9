-- A run may wait for the user's answer to a question (`waiting_input`: no worker, no
-- lease, no open hold) and end `expired` when the answer does not come in time. The
-- question, its choices and its deadline are the `clarification.requested` event; the
-- expiry is a job scheduled at the deadline. 0005 is released: its CHECK is replaced.

ALTER TABLE runs DROP CONSTRAINT runs_state_check;
ALTER TABLE runs ADD CONSTRAINT runs_state_check CHECK (state IN ('queued', 'running', 'completed', 'failed', 'cancelled', 'waiting_input', 'expired'));
