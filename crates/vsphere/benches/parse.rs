//! Parse a RetrievePropertiesEx response describing 10,000 VMs (name, power state, instance
//! UUID, extraConfig with deskpool markers and some foreign keys), as `list_vms` does.
//! Prints size, time and throughput; asserts only correctness, never time.
//!
//! `cargo bench -p deskpool-vsphere --bench parse`

use std::fmt::Write as _;
use std::time::Instant;

use deskpool_vsphere::__private::parse_vm_page;

const VMS: usize = 10_000;
const ROUNDS: usize = 15;

fn response(vms: usize) -> String {
    let xsi = r#"xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance""#;
    let mut s = String::with_capacity(vms * 1200);
    s.push_str(r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><RetrievePropertiesExResponse xmlns="urn:vim25"><returnval>"#);
    for i in 0..vms {
        let power = ["poweredOn", "poweredOff", "suspended"][i % 3];
        write!(
            s,
            r#"<objects><obj type="VirtualMachine">vm-{i}</obj><propSet><name>config.extraConfig</name><val {xsi} XMLSchema-instance:type="ArrayOfOptionValue"><OptionValue XMLSchema-instance:type="OptionValue"><key>deskpool.pool</key><value XMLSchema-instance:type="xsd:string">lab-{p}</value></OptionValue><OptionValue XMLSchema-instance:type="OptionValue"><key>deskpool.desktop</key><value XMLSchema-instance:type="xsd:string">{i:08}</value></OptionValue><OptionValue XMLSchema-instance:type="OptionValue"><key>svga.present</key><value XMLSchema-instance:type="xsd:string">TRUE</value></OptionValue><OptionValue XMLSchema-instance:type="OptionValue"><key>tools.guest.desktop.autolock</key><value XMLSchema-instance:type="xsd:string">FALSE</value></OptionValue></val></propSet><propSet><name>config.instanceUuid</name><val {xsi} XMLSchema-instance:type="xsd:string">5b1a9c1e-0000-4000-8000-{i:012}</val></propSet><propSet><name>name</name><val {xsi} XMLSchema-instance:type="xsd:string">lab-{i:05}</val></propSet><propSet><name>runtime.powerState</name><val {xsi} XMLSchema-instance:type="VirtualMachinePowerState">{power}</val></propSet></objects>"#,
            p = i % 7,
        )
        .unwrap();
    }
    s.push_str("</returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>");
    s
}

fn main() {
    let doc = response(VMS);
    let mb = doc.len() as f64 / 1e6;
    // Warm up and check the result is right.
    let (vms, token) = parse_vm_page(doc.as_bytes()).expect("parses");
    assert_eq!(vms.len(), VMS);
    assert_eq!(token, None);
    assert_eq!(vms[42].name, "lab-00042");
    assert_eq!(vms[42].extra_config.len(), 2);

    let mut times: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            let (vms, _) = parse_vm_page(doc.as_bytes()).expect("parses");
            let ms = t.elapsed().as_secs_f64() * 1e3;
            std::hint::black_box(vms);
            ms
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let (best, median) = (times[0], times[ROUNDS / 2]);
    println!(
        "parse RetrievePropertiesEx, {VMS} VMs: {mb:.2} MB; best {best:.1} ms, median {median:.1} ms; {:.0} MB/s (median); median/target(100 ms) = {:.2}",
        mb / (median / 1e3),
        median / 100.0
    );
}
