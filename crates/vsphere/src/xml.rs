//! Minimal XML layer: a namespace-aware reader that builds a small element tree, and a
//! writer that escapes every value it is given.
//!
//! SOAP responses from vCenter are small-to-medium documents with no mixed content, so a
//! tree is simpler to query than a streaming state machine and still fast enough
//! (see `benches/parse.rs`).

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::base::MoRef;

const XSI_NS: &[u8] = b"http://www.w3.org/2001/XMLSchema-instance";
/// Deeper documents are refused: vim25 responses never nest this deep, and a bound keeps
/// hostile input from exhausting the stack (building or dropping the tree is recursive).
const MAX_DEPTH: usize = 128;

/// One element: local name, the two attributes vim25 uses, text, children. Strings borrow
/// from the response buffer unless unescaping had to allocate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Node<'a> {
    /// Local name (prefix stripped).
    pub name: Cow<'a, str>,
    /// Value of the XML Schema instance `type` attribute, resolved by namespace: vCenter
    /// writes `xsi:type`, the simulator `XMLSchema-instance:type`.
    pub xsi_type: Option<Cow<'a, str>>,
    /// The unqualified `type` attribute that managed object references carry.
    pub type_attr: Option<Cow<'a, str>>,
    /// Concatenated text content (unescaped).
    pub text: Cow<'a, str>,
    pub children: Vec<Node<'a>>,
}

impl<'a> Node<'a> {
    /// First child with this local name.
    pub fn child(&self, name: &str) -> Option<&Node<'a>> {
        self.children.iter().find(|c| c.name == name)
    }

    /// All children with this local name.
    pub fn children_named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s Node<'a>> + 's {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Text of the first child with this name.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| &*c.text)
    }

    /// Interpret this element as a managed object reference (`<x type="Kind">value</x>`).
    pub fn as_moref(&self) -> Option<MoRef> {
        let kind = self.type_attr.as_ref()?;
        if kind.is_empty() || self.text.is_empty() {
            return None;
        }
        Some(MoRef::new(kind.as_ref(), self.text.as_ref()))
    }

    /// The xsi:type without a namespace prefix (`xsd:string` -> `string`).
    pub fn xsi_type_local(&self) -> Option<&str> {
        self.xsi_type
            .as_deref()
            .map(|t| t.rsplit_once(':').map_or(t, |(_, l)| l))
    }

    /// Re-serialise the children of this element, writing type attributes as `xsi:type`
    /// (the prefix our envelopes declare) whatever prefix the server used.
    pub fn write_children(&self, w: &mut Writer) {
        for c in &self.children {
            c.write(w);
        }
    }

    fn write(&self, w: &mut Writer) {
        w.buf.push('<');
        w.buf.push_str(&self.name);
        if let Some(t) = &self.xsi_type {
            w.buf.push_str(" xsi:type=\"");
            w.buf.push_str(&quick_xml::escape::escape(t.as_ref()));
            w.buf.push('"');
        }
        if let Some(t) = &self.type_attr {
            w.buf.push_str(" type=\"");
            w.buf.push_str(&quick_xml::escape::escape(t.as_ref()));
            w.buf.push('"');
        }
        w.buf.push('>');
        if self.children.is_empty() {
            w.buf
                .push_str(&quick_xml::escape::escape(self.text.as_ref()));
        } else {
            self.write_children(w);
        }
        w.buf.push_str("</");
        w.buf.push_str(&self.name);
        w.buf.push('>');
    }
}

/// Why a document could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct XmlError(pub String);

impl std::fmt::Display for XmlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parse a whole document into its root element.
pub(crate) fn parse(bytes: &[u8]) -> Result<Node<'_>, XmlError> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| XmlError(format!("response is not UTF-8: {e}")))?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    reader.config_mut().expand_empty_elements = false;

    let mut stack: Vec<Node<'_>> = Vec::new();
    // Namespace prefixes in scope. Only type attributes need resolving, so a small stack of
    // declarations is cheaper than a namespace-resolving reader.
    let mut scopes = Scopes::default();
    let mut root: Option<Node<'_>> = None;
    loop {
        // Element namespaces do not matter (everything is urn:vim25); attribute prefixes
        // are resolved in `open`.
        let event = match reader.read_event() {
            Ok(ev) => ev,
            Err(e) => {
                let at = reader.buffer_position();
                return Err(XmlError(format!("malformed XML at byte {at}: {e}")));
            }
        };
        match event {
            Event::Start(start) => {
                if root.is_some() {
                    return Err(XmlError("content after the root element".into()));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError(format!("elements nested deeper than {MAX_DEPTH}")));
                }
                stack.push(open(text, &mut scopes, stack.len(), &start)?);
            }
            Event::Empty(start) => {
                if root.is_some() {
                    return Err(XmlError("content after the root element".into()));
                }
                let node = open(text, &mut scopes, stack.len(), &start)?;
                scopes.leave(stack.len());
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::End(_) => {
                let node = stack
                    .pop()
                    .ok_or_else(|| XmlError("unbalanced end tag".into()))?;
                scopes.leave(stack.len());
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    let s = t
                        .unescape()
                        .map_err(|e| XmlError(format!("bad text content: {e}")))?;
                    append(&mut top.text, s);
                } else if !t.iter().all(u8::is_ascii_whitespace) {
                    return Err(XmlError("text outside the root element".into()));
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    let s =
                        std::str::from_utf8(&c).map_err(|e| XmlError(format!("bad CDATA: {e}")))?;
                    append(&mut top.text, Cow::Owned(s.to_owned()));
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
    }
    if let Some(open) = stack.last() {
        return Err(XmlError(format!(
            "truncated document: <{}> is never closed",
            open.name
        )));
    }
    root.ok_or_else(|| XmlError("empty document".into()))
}

fn append<'a>(text: &mut Cow<'a, str>, more: Cow<'a, str>) {
    if text.is_empty() {
        *text = more;
    } else {
        text.to_mut().push_str(&more);
    }
}

/// `part` as a slice of `input` with the input's lifetime when it points into it (the
/// reader borrows from the input), else an owned copy. Avoids one allocation per element.
fn reborrow<'a>(input: &'a str, part: &[u8]) -> Result<Cow<'a, str>, XmlError> {
    let start = (part.as_ptr() as usize).wrapping_sub(input.as_ptr() as usize);
    if let Some(s) = input.get(start..start.wrapping_add(part.len())) {
        if s.as_bytes().as_ptr() == part.as_ptr() {
            return Ok(Cow::Borrowed(s));
        }
    }
    std::str::from_utf8(part)
        .map(|s| Cow::Owned(s.to_owned()))
        .map_err(|e| XmlError(format!("bad name: {e}")))
}

/// Namespace prefix declarations in scope: (prefix, bound to the XSI namespace, depth of the
/// element that declared it).
#[derive(Default)]
struct Scopes<'a> {
    decls: Vec<(&'a [u8], bool, usize)>,
}

impl<'a> Scopes<'a> {
    /// Forgets the declarations of the element at `depth`, which just closed.
    fn leave(&mut self, depth: usize) {
        while self.decls.last().is_some_and(|d| d.2 >= depth) {
            self.decls.pop();
        }
    }

    /// Whether `prefix` is bound to the XSI namespace; None if it is not declared.
    fn is_xsi(&self, prefix: &[u8]) -> Option<bool> {
        self.decls.iter().rev().find(|d| d.0 == prefix).map(|d| d.1)
    }
}

fn open<'a>(
    input: &'a str,
    scopes: &mut Scopes<'a>,
    depth: usize,
    start: &BytesStart<'a>,
) -> Result<Node<'a>, XmlError> {
    let mut node = Node {
        name: reborrow(input, start.local_name().as_ref())?,
        ..Node::default()
    };
    // Declarations first: they apply to this element's own attributes too.
    let mut typed = Vec::new();
    for attr in start.attributes().with_checks(false) {
        let attr = attr.map_err(|e| XmlError(format!("bad attribute on <{}>: {e}", node.name)))?;
        let key: &[u8] = attr.key.as_ref();
        if let Some(prefix) = key.strip_prefix(b"xmlns:") {
            let prefix: &'a [u8] = match reborrow(input, prefix)? {
                Cow::Borrowed(p) => p.as_bytes(),
                Cow::Owned(_) => return Err(XmlError("namespace prefix outside the input".into())),
            };
            let uri = attr
                .unescape_value()
                .map_err(|e| XmlError(format!("bad namespace on <{}>: {e}", node.name)))?;
            scopes.decls.push((prefix, uri.as_bytes() == XSI_NS, depth));
        } else if key == b"type" || key.ends_with(b":type") {
            typed.push(attr);
        }
    }
    for attr in typed {
        let raw = reborrow(input, &attr.value)?;
        let value = match raw {
            Cow::Borrowed(b) => quick_xml::escape::unescape(b),
            Cow::Owned(o) => quick_xml::escape::unescape(&o).map(|c| Cow::Owned(c.into_owned())),
        }
        .map_err(|e| XmlError(format!("bad attribute value on <{}>: {e}", node.name)))?;
        let key: &[u8] = attr.key.as_ref();
        match key.strip_suffix(b":type") {
            None => node.type_attr = Some(value),
            Some(prefix) => match scopes.is_xsi(prefix) {
                Some(true) => node.xsi_type = Some(value),
                Some(false) => {}
                // A prefix we cannot resolve is a malformed document, not something to guess at.
                None => {
                    return Err(XmlError(format!(
                        "undeclared namespace prefix '{}' on <{}>",
                        String::from_utf8_lossy(prefix),
                        node.name
                    )))
                }
            },
        }
    }
    Ok(node)
}

/// Builds the inside of a SOAP body. Every text value and attribute goes through
/// `quick_xml::escape::escape`; element names are compile-time constants.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub buf: String,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    /// `<tag>value</tag>`, value escaped.
    pub fn text(&mut self, tag: &str, value: &str) -> &mut Self {
        self.buf.push('<');
        self.buf.push_str(tag);
        self.buf.push('>');
        self.buf.push_str(&quick_xml::escape::escape(value));
        self.buf.push_str("</");
        self.buf.push_str(tag);
        self.buf.push('>');
        self
    }

    /// `<tag xsi:type="type">value</tag>`.
    pub fn typed_text(&mut self, tag: &str, xsi_type: &str, value: &str) -> &mut Self {
        self.open_typed(tag, xsi_type);
        self.buf.push_str(&quick_xml::escape::escape(value));
        self.close(tag)
    }

    pub fn boolean(&mut self, tag: &str, value: bool) -> &mut Self {
        self.text(tag, if value { "true" } else { "false" })
    }

    /// `<tag type="Kind">value</tag>`.
    pub fn moref(&mut self, tag: &str, m: &MoRef) -> &mut Self {
        self.buf.push('<');
        self.buf.push_str(tag);
        self.buf.push_str(" type=\"");
        self.buf
            .push_str(&quick_xml::escape::escape(m.kind.as_str()));
        self.buf.push_str("\">");
        self.buf
            .push_str(&quick_xml::escape::escape(m.value.as_str()));
        self.buf.push_str("</");
        self.buf.push_str(tag);
        self.buf.push('>');
        self
    }

    pub fn open(&mut self, tag: &str) -> &mut Self {
        self.buf.push('<');
        self.buf.push_str(tag);
        self.buf.push('>');
        self
    }

    pub fn open_typed(&mut self, tag: &str, xsi_type: &str) -> &mut Self {
        self.buf.push('<');
        self.buf.push_str(tag);
        self.buf.push_str(" xsi:type=\"");
        self.buf.push_str(&quick_xml::escape::escape(xsi_type));
        self.buf.push_str("\">");
        self
    }

    pub fn close(&mut self, tag: &str) -> &mut Self {
        self.buf.push_str("</");
        self.buf.push_str(tag);
        self.buf.push('>');
        self
    }

    /// Already-serialised XML produced by this crate (never user input).
    pub fn raw_trusted(&mut self, xml: &str) -> &mut Self {
        self.buf.push_str(xml);
        self
    }

    pub fn finish(self) -> String {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_type_attribute_by_namespace_not_prefix() {
        let sim = br#"<a xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="TaskInfo"/>"#;
        let vc =
            br#"<a xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="TaskInfo"/>"#;
        let odd = br#"<a xmlns:q="http://www.w3.org/2001/XMLSchema-instance" q:type="TaskInfo"/>"#;
        for doc in [&sim[..], &vc[..], &odd[..]] {
            assert_eq!(parse(doc).unwrap().xsi_type.as_deref(), Some("TaskInfo"));
        }
        // Same local name, other namespace: not a schema type.
        let other = br#"<a xmlns:x="urn:other" x:type="Nope" type="Folder">f</a>"#;
        let n = parse(other).unwrap();
        assert_eq!(n.xsi_type, None);
        assert_eq!(n.type_attr.as_deref(), Some("Folder"));
    }

    #[test]
    fn inherited_prefix_binding_is_honoured() {
        let doc =
            br#"<r xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><c xsi:type="X"/></r>"#;
        assert_eq!(
            parse(doc).unwrap().children[0].xsi_type.as_deref(),
            Some("X")
        );
    }

    #[test]
    fn undeclared_prefix_is_an_error() {
        assert!(parse(br#"<a xsi:type="X"/>"#).is_err());
    }

    #[test]
    fn truncated_and_garbage_are_errors() {
        assert!(parse(b"<a><b>").is_err());
        assert!(parse(b"").is_err());
        assert!(parse(b"<a></b>").is_err());
        assert!(parse(b"\xff\xfe").is_err());
        assert!(parse(b"<a/><b/>").is_err());
        let deep = "<a>".repeat(MAX_DEPTH + 1);
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn writer_escapes_values_and_attributes() {
        let mut w = Writer::new();
        w.text("name", "</name><evil>&\"'")
            .moref("obj", &MoRef::new("Folder\"x", "<v>"));
        let s = w.finish();
        assert_eq!(
            s,
            "<name>&lt;/name&gt;&lt;evil&gt;&amp;&quot;&apos;</name><obj type=\"Folder&quot;x\">&lt;v&gt;</obj>"
        );
        let wrapped = format!("<r>{s}</r>");
        let n = parse(wrapped.as_bytes()).unwrap();
        assert_eq!(n.child_text("name"), Some("</name><evil>&\"'"));
    }
}
