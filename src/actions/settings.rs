//! `update_settings`: trusted certificates, disk associations (`instance/disks/<name>` links to the
//! disks' devices), and a rotated bus certificate.
//!
//! Unlike the Go agent, which exits and lets the supervisor restart it, the new bus certificate is
//! hot-swapped: the bus reconnects with it and the task stays answerable over the new connection.

use super::{bind, Action, Call};
use crate::error::Context as _;
use crate::settings::UpdateSettings;
use serde_json::{json, Value};

/// `update_settings [settings]`, persistent so a restart mid-way still answers the director's poll.
pub struct UpdateSettingsAction {
    update: UpdateSettings,
}
impl Action for UpdateSettingsAction {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (update,): (UpdateSettings,) = bind(args)?;
        Ok(UpdateSettingsAction { update })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let ctx = call.ctx;
        check_cert(&self.update.mbus.cert)?;
        if let Err(e) = ctx.settings.load() {
            log::warn!("update_settings: reloading settings: {e}; keeping the current ones");
        }
        for a in &self.update.disk_associations {
            let disk = crate::platform::disks::find_disk(&ctx.dirs, &ctx.settings.get(), &a.cid)
                .context("Fetching disk settings")?;
            ctx.platform
                .associate_disk(&a.name, &disk)
                .with_context(|| format!("Associating disk {}", a.name))?;
        }
        ctx.platform
            .update_trusted_certs(&self.update.trusted_certs)
            .context("Updating trusted certificates")?;
        let effective = ctx.settings.apply_update(self.update)?;
        ctx.bus.settings_changed(&effective);
        Ok(json!("ok"))
    }
    /// Everything the task did before a restart was persisted first; the settings written are already
    /// in effect, so resuming only reports success.
    fn resume(self, _: &Call) -> Result<Value, String> {
        Ok(json!("ok"))
    }
}

/// Refuses a bus certificate that cannot be used, before anything is persisted: a bad certificate saved
/// in `update_settings.json` would otherwise keep the agent off the bus after its next restart.
fn check_cert(cert: &crate::settings::Cert) -> Result<(), String> {
    if cert.ca.is_empty() {
        return Ok(()); // ignored by the precedence rules: nothing to switch to
    }
    crate::tls::parse_certs(&cert.ca).context("mbus.cert.ca")?;
    crate::tls::parse_certs(&cert.certificate).context("mbus.cert.certificate")?;
    crate::tls::parse_key(&cert.private_key).context("mbus.cert.private_key")?;
    Ok(())
}
