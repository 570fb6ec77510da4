/// The kubernetes node provider's pure part: the pod a node becomes, the label selector that
/// finds this head's pods, and what a pod list says about its nodes. No I/O: the driver
/// (`ServeEmbedded.KubernetesNodeProvider`) sends these to the API server and reads its answers
/// back through here.
///
/// Naming (the Kubernetes API conventions): labels select (`app.kubernetes.io/managed-by:
/// swift-serve`, `swift-serve.io/cluster: NAME`, and the node type, made label-safe);
/// annotations carry the exact node id and type, which may hold characters a label may not.
public enum KubernetesPods {
    public static let managedByLabel = "app.kubernetes.io/managed-by"
    public static let managedBy = "swift-serve"
    public static let clusterLabel = "swift-serve.io/cluster"
    public static let nodeTypeLabel = "swift-serve.io/node-type"
    public static let nodeIDAnnotation = "swift-serve.io/node-id"
    public static let nodeTypeAnnotation = "swift-serve.io/node-type"
    public static let requestIDAnnotation = "swift-serve.io/request-id"
    /// The container that runs `serve-worker` when the template has several; else the first.
    public static let workerContainerName = "serve-worker"

    /// `app.kubernetes.io/managed-by=swift-serve,swift-serve.io/cluster=NAME`: this head's pods
    /// and no others (a label selector, RFC-less but documented in the API conventions).
    public static func labelSelector(clusterName: String) -> String {
        "\(Self.managedByLabel)=\(Self.managedBy),\(Self.clusterLabel)=\(clusterName)"
    }

    /// The pod's name: `CLUSTER-NODEID`, lowercased, other characters as `-`, at most 63
    /// characters (it is also the pod's hostname). A name that had to change gets 8 hex digits
    /// of the id's hash, so two ids never share a pod. The same id always gives the same name:
    /// that is what makes a retried launch find its pod (409) instead of starting another.
    public static func podName(clusterName: String, nodeID: String) -> String {
        let wanted = "\(clusterName)-\(nodeID)"
        let cleaned = Self.dnsLabel(wanted, limit: 63)
        if cleaned == wanted { return cleaned }
        let suffix = String(FNV1a.hex(wanted).suffix(8))
        return Self.dnsLabel(String(cleaned.prefix(63 - 9)), limit: 54) + "-" + suffix
    }

    /// Lowercase letters, digits and `-`, starting and ending with a letter or digit.
    static func dnsLabel(_ text: String, limit: Int) -> String {
        var result = String(text.lowercased().map { ($0.isASCII && ($0.isLetter || $0.isNumber)) ? $0 : "-" }.prefix(limit))
        while result.hasPrefix("-") { result.removeFirst() }
        while result.hasSuffix("-") { result.removeLast() }
        return result.isEmpty ? "node" : result
    }

    /// A label value for any text: letters, digits, `-`, `_`, `.`, at most 63, alphanumeric at
    /// both ends (the exact text goes in an annotation beside it).
    public static func labelValue(_ text: String) -> String {
        var result = String(text.map { ($0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0))) ? $0 : "_" }.prefix(63))
        while let first = result.first, !(first.isLetter || first.isNumber) { result.removeFirst() }
        while let last = result.last, !(last.isLetter || last.isNumber) { result.removeLast() }
        return result
    }

    public static func isLabelValue(_ text: String) -> Bool {
        !text.isEmpty && Self.labelValue(text) == text
    }

    /// A namespace name (RFC 1123 label).
    public static func isDNSLabel(_ text: String) -> Bool {
        text.count <= 63 && !text.isEmpty && Self.dnsLabel(text, limit: 63) == text
    }

    /// A Secret's name (RFC 1123 subdomain: labels joined by dots).
    public static func isDNSSubdomain(_ text: String) -> Bool {
        text.count <= 253 && text.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { Self.isDNSLabel(String($0)) }
    }

    /// The pod for one node: the template with this head's labels and the node's annotations,
    /// the name from `podName`, and in the worker container the worker's arguments after the
    /// template's own. Where the template leaves them out: `SERVE_TOKEN` from the Secret,
    /// resource requests matching what the worker offers (CPU and memory; GPUs as
    /// `nvidia.com/gpu` limits, which is how the device plugin schedules them), and
    /// `restartPolicy: Never` (a worker that exits is the node autoscaler's to replace, under a
    /// new id).
    public static func pod(
        template: JSONValue,
        clusterName: String,
        nodeID: String,
        nodeType: NodeTypeConfig,
        workerArguments: [String],
        tokenSecret: String,
        requestID: String
    ) -> JSONValue {
        var metadata = template["metadata"]?.objectValue ?? [:]
        metadata["generateName"] = nil
        metadata["namespace"] = nil
        metadata["name"] = .string(Self.podName(clusterName: clusterName, nodeID: nodeID))
        var labels = metadata["labels"]?.objectValue ?? [:]
        labels[Self.managedByLabel] = .string(Self.managedBy)
        labels[Self.clusterLabel] = .string(clusterName)
        labels[Self.nodeTypeLabel] = .string(Self.labelValue(nodeType.name))
        metadata["labels"] = .object(labels)
        var annotations = metadata["annotations"]?.objectValue ?? [:]
        annotations[Self.nodeIDAnnotation] = .string(nodeID)
        annotations[Self.nodeTypeAnnotation] = .string(nodeType.name)
        annotations[Self.requestIDAnnotation] = .string(requestID)
        metadata["annotations"] = .object(annotations)

        var spec = template["spec"]?.objectValue ?? [:]
        if spec["restartPolicy"] == nil { spec["restartPolicy"] = "Never" }
        var containers = spec["containers"]?.arrayValue ?? []
        let index = containers.firstIndex { $0["name"]?.stringValue == Self.workerContainerName } ?? 0
        if containers.indices.contains(index), var container = containers[index].objectValue {
            let arguments = (container["args"]?.arrayValue ?? []) + workerArguments.map { JSONValue.string($0) }
            container["args"] = .array(arguments)
            var env = container["env"]?.arrayValue ?? []
            if !env.contains(where: { $0["name"]?.stringValue == "SERVE_TOKEN" }) {
                env.append(["name": "SERVE_TOKEN", "valueFrom": ["secretKeyRef": ["name": .string(tokenSecret), "key": "token"]]])
            }
            container["env"] = .array(env)
            container["resources"] = Self.resources(container["resources"], for: nodeType.resources)
            containers[index] = .object(container)
        }
        spec["containers"] = .array(containers)
        return ["apiVersion": "v1", "kind": "Pod", "metadata": .object(metadata), "spec": .object(spec)]
    }

    /// The template's resources with what the node type offers added where the template says
    /// nothing: `requests.cpu`, `requests.memory` and `limits.memory` (bytes), and
    /// `limits["nvidia.com/gpu"]` (whole GPUs).
    static func resources(_ given: JSONValue?, for offered: ResourceSet) -> JSONValue {
        var requests = given?["requests"]?.objectValue ?? [:]
        var limits = given?["limits"]?.objectValue ?? [:]
        let cpu = offered[ResourceSet.cpu]
        if cpu > .zero, requests["cpu"] == nil { requests["cpu"] = .string(cpu.description) }
        let memory = offered[ResourceSet.memory]
        if memory > .zero {
            if requests["memory"] == nil { requests["memory"] = .string(memory.description) }
            if limits["memory"] == nil { limits["memory"] = .string(memory.description) }
        }
        let gpus = offered[ResourceSet.gpu]
        if gpus > .zero, limits["nvidia.com/gpu"] == nil { limits["nvidia.com/gpu"] = .string(gpus.description) }
        var result = given?.objectValue ?? [:]
        if !requests.isEmpty { result["requests"] = .object(requests) }
        if !limits.isEmpty { result["limits"] = .object(limits) }
        return .object(result)
    }

    /// One of this head's pods, as a list reports it.
    public struct PodState: Sendable, Hashable {
        public var podName: String
        public var nodeID: String
        public var nodeType: String
        /// The pod's phase in lowercase (`pending`, `running`, `unknown`), or `terminating`
        /// once it has a deletion timestamp.
        public var state: String

        /// Deleted, or its worker has exited (`Succeeded`, `Failed`): the node is gone.
        public var isTerminated: Bool {
            ["terminating", "succeeded", "failed"].contains(self.state)
        }

        /// Finished but not yet deleted: the driver deletes it so it does not linger.
        public var needsDeleting: Bool {
            ["succeeded", "failed"].contains(self.state)
        }
    }

    /// Reads a `PodList`: the pods of this cluster (the label checked again, whatever the
    /// server filtered) that carry a node id. Throws when the answer is not a pod list.
    public static func pods(inList list: JSONValue, clusterName: String) throws(KubernetesAPIError) -> [PodState] {
        guard let items = list["items"]?.arrayValue else {
            throw KubernetesAPIError("the API server's pod list has no items: \(list.jsonString().prefix(200))")
        }
        return items.compactMap { item -> PodState? in
            let metadata = item["metadata"]
            guard metadata?["labels"]?[Self.clusterLabel]?.stringValue == clusterName,
                  metadata?["labels"]?[Self.managedByLabel]?.stringValue == Self.managedBy,
                  let name = metadata?["name"]?.stringValue,
                  let nodeID = metadata?["annotations"]?[Self.nodeIDAnnotation]?.stringValue
            else { return nil }
            let nodeType = metadata?["annotations"]?[Self.nodeTypeAnnotation]?.stringValue ?? ""
            let phase = item["status"]?["phase"]?.stringValue?.lowercased() ?? "pending"
            let state = metadata?["deletionTimestamp"] != nil ? "terminating" : phase
            return PodState(podName: name, nodeID: nodeID, nodeType: nodeType, state: state)
        }
    }

    /// What a failed call's answer says: the `Status` object's message when there is one.
    public static func failure(status: Int, body: String, doing action: String) -> KubernetesAPIError {
        let message = (try? JSONValue.parse(body))?["message"]?.stringValue ?? String(body.prefix(300))
        let hint = switch status {
        case 401: " (the API server refused the credentials: check the token or client certificate)"
        case 403: " (the service account may not do this: deploy/kubernetes/rbac.yaml grants create, get, list and delete on pods)"
        case 404: " (no such namespace or resource)"
        default: ""
        }
        return KubernetesAPIError("\(action): HTTP \(status)\(hint): \(message)")
    }
}

/// A Kubernetes API call that failed or answered something unexpected.
public struct KubernetesAPIError: Error, Sendable, Hashable, CustomStringConvertible {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }
}
