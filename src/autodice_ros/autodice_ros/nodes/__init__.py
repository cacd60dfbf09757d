"""rclpy nodes: thin ROS plumbing over the plain-Python pieces of the package."""
