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
}

/// Paths and versions of the control plane's RPCs.
public enum ControlPaths {
    public static let connect = "/serve.v1.Control/Connect"
    public static let protocolVersion: UInt32 = 1
}
