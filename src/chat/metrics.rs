//! The chat service's counters, rendered into `/metrics` in Prometheus text format.

use super::service::Service;

/// Counters of the messaging path, rendered into `/metrics`.
#[derive(Debug, Default)]
pub struct ChatMetrics {
    /// Messages stored and acknowledged.
    pub accepted: u64,
    /// `message` events queued for delivery (one per recipient connection).
    pub delivered: u64,
    /// Sends answered from an earlier copy (repeated `client_id`).
    pub deduplicated: u64,
    /// Messages deleted by retention.
    pub pruned: u64,
    /// Commits of a batch.
    pub commits: u64,
    /// Commits that failed (their senders got `unavailable`).
    pub commit_failures: u64,
    /// Messages over all commits (batch size sum).
    pub batched: u64,
    /// Largest batch.
    pub batch_max: u64,
    /// Commit latency histogram, by the bucket bounds in [`COMMIT_BUCKETS_US`].
    pub commit_latency: [u64; COMMIT_BUCKETS_US.len() + 1],
    /// Sum of commit latencies, microseconds.
    pub commit_latency_sum_us: u64,
    /// `register`/`login` refused by the per-address bucket.
    pub logins_refused_address: u64,
    /// `login` refused by an account's failure budgets.
    pub logins_refused_account: u64,
    /// `login`/`auth` refused over `--max-connections-per-user`.
    pub auth_refused_per_user: u64,
    /// Lookups of users by name refused because the caller's budget of unknown names was spent.
    pub unknown_user_refusals: u64,
    /// `group.create` and `group.join` refused by the per-user limits on groups.
    pub group_limit_refusals: u64,
}

/// Counters of file uploads.
#[derive(Debug, Default)]
pub struct FileMetrics {
    /// Bytes written to upload files.
    pub bytes_uploaded: u64,
    /// Uploads completed and stored.
    pub uploads: u64,
    /// Failed or abandoned uploads, by reason.
    pub failures: std::collections::BTreeMap<&'static str, u64>,
    /// Signed download links given by `file.link`.
    pub links_issued: u64,
    /// Downloads refused for their credential in the URL, by reason.
    pub downloads_refused: std::collections::BTreeMap<&'static str, u64>,
}

/// Why a download's URL credential was refused, as counted.
pub const DOWNLOAD_REFUSALS: [&str; 3] = ["link_invalid", "link_expired", "token_in_url"];

impl FileMetrics {
    /// Counts a download refused for its URL credential (one of [`DOWNLOAD_REFUSALS`]).
    pub fn download_refused(&mut self, reason: &'static str) {
        *self.downloads_refused.entry(reason).or_default() += 1;
    }
}

/// Upper bounds (microseconds) of the commit latency histogram's buckets.
pub const COMMIT_BUCKETS_US: [u64; 8] = [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000];

impl Service {
    /// The messaging counters in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let m = &self.metrics;
        let mut one = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        one(
            "chatd_users_online",
            "gauge",
            "Users with at least one authenticated connection.",
            self.online.len() as u64,
        );
        one(
            "chatd_messages_accepted_total",
            "counter",
            "Messages stored and acknowledged.",
            m.accepted,
        );
        one(
            "chatd_messages_delivered_total",
            "counter",
            "Message events queued to recipient connections.",
            m.delivered,
        );
        one(
            "chatd_messages_deduplicated_total",
            "counter",
            "Sends answered from an earlier copy (repeated client_id).",
            m.deduplicated,
        );
        one(
            "chatd_messages_pruned_total",
            "counter",
            "Messages (and their files) deleted by --message-retention or --file-retention.",
            m.pruned,
        );
        one(
            "chatd_unknown_user_refusals_total",
            "counter",
            "Lookups of users by name refused with rate_limited: the caller's budget of unknown names was spent.",
            m.unknown_user_refusals,
        );
        one(
            "chatd_group_limit_refusals_total",
            "counter",
            "group.create, group.join and ownership hand-overs refused by the per-user group limits.",
            m.group_limit_refusals,
        );
        one(
            "chatd_commit_failures_total",
            "counter",
            "Batch commits that failed; their senders got unavailable.",
            m.commit_failures,
        );
        one(
            "chatd_commit_batch_max",
            "gauge",
            "Largest batch committed at once.",
            m.batch_max,
        );
        one(
            "chatd_auth_refused_per_user_total",
            "counter",
            "login/auth answered rate_limited over the per-user connection cap.",
            m.auth_refused_per_user,
        );
        let _ = writeln!(out, "# HELP chatd_logins_rate_limited_total register/login answered rate_limited, by the limit: per address, or an account's failed-login budgets.\n# TYPE chatd_logins_rate_limited_total counter\nchatd_logins_rate_limited_total{{limit=\"address\"}} {}\nchatd_logins_rate_limited_total{{limit=\"account\"}} {}", m.logins_refused_address, m.logins_refused_account);
        let _ = writeln!(out, "# HELP chatd_commit_batch_size Messages per commit.\n# TYPE chatd_commit_batch_size summary\nchatd_commit_batch_size_sum {}\nchatd_commit_batch_size_count {}", m.batched, m.commits);
        let _ = writeln!(out, "# HELP chatd_commit_seconds Time to commit a batch.\n# TYPE chatd_commit_seconds histogram");
        let mut cumulative = 0;
        for (i, bound) in COMMIT_BUCKETS_US.iter().enumerate() {
            cumulative += m.commit_latency[i];
            let _ = writeln!(
                out,
                "chatd_commit_seconds_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        cumulative += m.commit_latency[COMMIT_BUCKETS_US.len()];
        let _ = writeln!(
            out,
            "chatd_commit_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "chatd_commit_seconds_sum {}",
            m.commit_latency_sum_us as f64 / 1e6
        );
        let _ = writeln!(out, "chatd_commit_seconds_count {}", m.commits);
    }

    /// The file counters in Prometheus text format.
    pub fn render_file_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let m = &self.file_metrics;
        let _ = writeln!(out, "# HELP chatd_file_bytes_uploaded_total Bytes received in uploads.\n# TYPE chatd_file_bytes_uploaded_total counter\nchatd_file_bytes_uploaded_total {}", m.bytes_uploaded);
        let _ = writeln!(out, "# HELP chatd_file_uploads_total Uploads completed and stored.\n# TYPE chatd_file_uploads_total counter\nchatd_file_uploads_total {}", m.uploads);
        let _ = writeln!(out, "# HELP chatd_file_uploads_in_progress Uploads in progress.\n# TYPE chatd_file_uploads_in_progress gauge\nchatd_file_uploads_in_progress {}", self.uploads_in_progress());
        let _ = writeln!(out, "# HELP chatd_file_upload_failures_total Uploads that failed or were dropped, by reason.\n# TYPE chatd_file_upload_failures_total counter");
        for reason in [
            "cancelled",
            "disconnect",
            "overrun",
            "forbidden",
            "io",
            "storage",
        ] {
            let _ = writeln!(
                out,
                "chatd_file_upload_failures_total{{reason=\"{reason}\"}} {}",
                m.failures.get(reason).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(out, "# HELP chatd_file_links_issued_total Signed download links given by file.link.\n# TYPE chatd_file_links_issued_total counter\nchatd_file_links_issued_total {}", m.links_issued);
        let _ = writeln!(out, "# HELP chatd_file_downloads_refused_total Downloads answered 401 for the credential in their URL: a signed link that is invalid or expired, or a token in the query string.\n# TYPE chatd_file_downloads_refused_total counter");
        for reason in DOWNLOAD_REFUSALS {
            let _ = writeln!(
                out,
                "chatd_file_downloads_refused_total{{reason=\"{reason}\"}} {}",
                m.downloads_refused.get(reason).copied().unwrap_or(0)
            );
        }
    }
}
