import HTTPTypes

/// Headers between the ingress and a worker's data plane.
public enum ServeHeaders {
    /// Names the replica a request is for.
    public static let replica = HTTPField.Name("serve-replica")!
    /// The route prefix that was stripped from the path (also given to command replicas).
    public static let forwardedPrefix = HTTPField.Name("x-forwarded-prefix")!
    /// Set on a 503 when the replica did not take the request at all (full, stopping, unknown):
    /// the router may send it to another replica.
    public static let refused = HTTPField.Name("serve-refused")!
    /// The cluster token on data-plane requests.
    public static let token = HTTPField.Name("serve-token")!
    /// The node's handle token on a process replica's handle call (`SERVE_HANDLE_TOKEN`).
    public static let handleToken = HTTPField.Name("serve-handle-token")!
    /// Hop-by-hop compression between ServeWire peers, kept apart from the end-to-end
    /// `content-encoding` so that a proxy hop never changes what the origin said (RFC 9110 §7.7:
    /// a proxy must not transform content). A ServeWire client that can decode sends the codings
    /// it accepts here; a ServeWire server that compresses a response says which in
    /// `hopCoding`, and moves the response's `content-length` to `hopDecodedLength`. The client
    /// decodes, puts the length back and drops all three, so its caller sees the response the
    /// handler wrote. Other HTTP clients never send this field and never get compressed bodies.
    public static let acceptHopCoding = HTTPField.Name("serve-accept-hop-coding")!
    /// The coding a ServeWire server applied to this response body for this hop only.
    public static let hopCoding = HTTPField.Name("serve-hop-coding")!
    /// The response's own `content-length`, before the hop's compression.
    public static let hopDecodedLength = HTTPField.Name("serve-hop-decoded-length")!
}

/// Paths and versions of the control plane's RPCs.
public enum ControlPaths {
    public static let connect = "/serve.v1.Control/Connect"
    public static let protocolVersion: UInt32 = 1
}
