import Foundation

/// How to reach a Kubernetes API server: its URL, who we are (a bearer token or a client
/// certificate), whom to trust (a CA), and the default namespace.
public struct KubernetesAccess: Sendable, Hashable {
    /// A credential given as a file or inline (a kubeconfig's `…-data` fields, base64-decoded).
    public enum Material: Sendable, Hashable {
        case file(String)
        case data([UInt8])
    }

    public var server: String
    public var namespace: String?
    public var token: String?
    /// Read again before every call: projected service account tokens are rotated.
    public var tokenFile: String?
    public var certificateAuthority: Material?
    public var clientCertificate: Material?
    public var clientKey: Material?
    public var insecureSkipTLSVerify: Bool

    public init(
        server: String, namespace: String? = nil, token: String? = nil, tokenFile: String? = nil,
        certificateAuthority: Material? = nil, clientCertificate: Material? = nil, clientKey: Material? = nil,
        insecureSkipTLSVerify: Bool = false
    ) {
        self.server = server
        self.namespace = namespace
        self.token = token
        self.tokenFile = tokenFile
        self.certificateAuthority = certificateAuthority
        self.clientCertificate = clientCertificate
        self.clientKey = clientKey
        self.insecureSkipTLSVerify = insecureSkipTLSVerify
    }

    /// Where a pod's service account credentials are mounted.
    public static let serviceAccountDirectory = "/var/run/secrets/kubernetes.io/serviceaccount"

    /// The in-cluster access: `KUBERNETES_SERVICE_HOST`/`_PORT`, the service account's token
    /// and CA; nil outside a pod. `namespace` is the content of the service account's
    /// `namespace` file, which the caller reads.
    public static func inCluster(
        environment: [String: String], namespace: String?, directory: String = KubernetesAccess.serviceAccountDirectory
    ) -> KubernetesAccess? {
        guard let host = environment["KUBERNETES_SERVICE_HOST"], !host.isEmpty else { return nil }
        let port = environment["KUBERNETES_SERVICE_PORT"] ?? "443"
        let bracketed = host.contains(":") ? "[\(host)]" : host
        return KubernetesAccess(
            server: "https://\(bracketed):\(port)",
            namespace: namespace?.trimmingCharacters(in: .whitespacesAndNewlines),
            tokenFile: "\(directory)/token",
            certificateAuthority: .file("\(directory)/ca.crt"))
    }
}

/// A minimal kubeconfig reader (the fields `kubectl config view` shows that matter for a bearer
/// token or a client certificate): `current-context` (or the one named), its cluster's
/// `server`, `certificate-authority`/`-data` and `insecure-skip-tls-verify`, its user's `token`,
/// `tokenFile`, `client-certificate`/`-data` and `client-key`/`-data`, and its namespace. Exec
/// and auth-provider plugins are not run: such a user is refused with a message saying so.
/// Relative file paths are relative to the kubeconfig's directory, as kubectl reads them.
public enum KubeConfig {
    public static func parse(_ text: String, context wanted: String? = nil, directory: String) throws(KubernetesAPIError) -> KubernetesAccess {
        let root: JSONValue
        do {
            root = try ConfigParser.document(text).jsonValue
        } catch {
            throw KubernetesAPIError("the kubeconfig is not YAML: \(error)")
        }
        guard let contextName = wanted ?? root["current-context"]?.stringValue, !contextName.isEmpty else {
            throw KubernetesAPIError("the kubeconfig has no current-context; name one with provider.context")
        }
        let context = try Self.named(contextName, in: root, list: "contexts", field: "context")
        guard let clusterName = context["cluster"]?.stringValue, let userName = context["user"]?.stringValue else {
            throw KubernetesAPIError("the kubeconfig's context \(contextName) needs a cluster and a user")
        }
        let cluster = try Self.named(clusterName, in: root, list: "clusters", field: "cluster")
        let user = try Self.named(userName, in: root, list: "users", field: "user")
        guard let server = cluster["server"]?.stringValue, !server.isEmpty else {
            throw KubernetesAPIError("the kubeconfig's cluster \(clusterName) has no server")
        }
        if user["exec"] != nil || user["auth-provider"] != nil {
            throw KubernetesAPIError(
                "the kubeconfig's user \(userName) authenticates through a plugin (exec or auth-provider), which this provider does not run; use a token or a client certificate (e.g. a service account's token)")
        }
        func path(_ value: String) -> String {
            value.hasPrefix("/") ? value : "\(directory)/\(value)"
        }
        func material(_ object: JSONValue, _ name: String) throws(KubernetesAPIError) -> KubernetesAccess.Material? {
            if let data = object["\(name)-data"]?.stringValue {
                guard let bytes = Data(base64Encoded: data, options: .ignoreUnknownCharacters) else {
                    throw KubernetesAPIError("the kubeconfig's \(name)-data is not base64")
                }
                return .data([UInt8](bytes))
            }
            return object[name]?.stringValue.map { .file(path($0)) }
        }
        return KubernetesAccess(
            server: server,
            namespace: context["namespace"]?.stringValue,
            token: user["token"]?.stringValue,
            tokenFile: user["tokenFile"]?.stringValue.map(path),
            certificateAuthority: try material(cluster, "certificate-authority"),
            clientCertificate: try material(user, "client-certificate"),
            clientKey: try material(user, "client-key"),
            insecureSkipTLSVerify: cluster["insecure-skip-tls-verify"]?.boolValue ?? false)
    }

    /// `{name: NAME, FIELD: {...}}` from the list.
    static func named(_ name: String, in root: JSONValue, list: String, field: String) throws(KubernetesAPIError) -> JSONValue {
        guard let entry = root[list]?.arrayValue?.first(where: { $0["name"]?.stringValue == name }), let value = entry[field] else {
            throw KubernetesAPIError("the kubeconfig has no \(field) named \(name) in \(list)")
        }
        return value
    }
}
