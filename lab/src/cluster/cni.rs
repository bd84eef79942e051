//! The pod network: a Linux bridge `selfheal0` with the node IP, and a CNI conflist for
//! Debian's `bridge` + `host-local` plugins on a subnet nothing routes. `ipMasq` is off,
//! `isGateway` is off (the plugin would otherwise switch on the host's IP forwarding) and
//! pods get one route beyond their own subnet: the Service subnet through the node IP,
//! where kube-proxy's rules map the `kubernetes` Service to the API server on this host.
//! No default route: a pod reaches other pods, the host and the API server, and nothing
//! can leave the machine.

use super::error::Result;
use super::exec;
use super::layout::Layout;
use super::pki::{self, NODE_IP, SERVICE_CIDR};

/// The bridge's name.
pub const BRIDGE: &str = "selfheal0";
/// The pod subnet.
pub const POD_CIDR: &str = "10.88.0.0/24";
/// The CNI network's name.
pub const NETWORK: &str = "selfheal-lab";

/// Creates the bridge with the node IP (if absent) and writes the conflist.
pub fn setup(layout: &Layout) -> Result<()> {
    if !bridge_exists() {
        exec::run("ip", ["link", "add", BRIDGE, "type", "bridge"])?;
    }
    let addrs = exec::run("ip", ["-4", "-o", "addr", "show", "dev", BRIDGE])?;
    if !addrs.contains(&format!("inet {NODE_IP}/")) {
        exec::run(
            "ip",
            ["addr", "add", &format!("{NODE_IP}/24"), "dev", BRIDGE],
        )?;
    }
    exec::run("ip", ["link", "set", BRIDGE, "up"])?;
    let conf = format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "{NETWORK}",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{BRIDGE}",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{"subnet": "{POD_CIDR}", "rangeStart": "10.88.0.10", "rangeEnd": "10.88.0.250"}}]],
        "routes": [{{"dst": "{SERVICE_CIDR}", "gw": "{NODE_IP}"}}],
        "dataDir": "{ipam}"
      }}
    }}
  ]
}}
"#,
        ipam = layout.cni_ipam_dir().display()
    );
    pki::write(
        &layout.cni_conf_dir().join("10-selfheal-lab.conflist"),
        &conf,
    )
}

/// True if the bridge exists.
pub fn bridge_exists() -> bool {
    exec::run("ip", ["link", "show", "dev", BRIDGE]).is_ok()
}

/// Deletes the bridge (the veths went with their network namespaces).
pub fn teardown() -> Result<()> {
    if bridge_exists() {
        exec::run("ip", ["link", "del", BRIDGE])?;
    }
    // containerd's CNI library caches results under /var/lib/cni/results/<network>-<id>-<if>.
    if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{NETWORK}-"))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}
