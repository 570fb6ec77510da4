import ServeCore
import ServeHead

extension NodeAutoscaling {
    /// Node autoscaling with the provider the cluster config names (`local`, `command` or `kubernetes`).
    public static func from(_ config: ClusterConfig) -> NodeAutoscaling {
        NodeAutoscaling(config: config) { context in
            switch config.provider {
            case .local(let local):
                try LocalNodeProvider(config: local, context: context)
            case .command(let command):
                CommandNodeProvider(config: command, context: context)
            case .kubernetes(let kubernetes):
                KubernetesNodeProvider(config: kubernetes, context: context)
            }
        }
    }
}
