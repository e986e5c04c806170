"""ec2_images."""
