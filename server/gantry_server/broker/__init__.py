"""The broker face (seed 004): inventory, sessions, lifecycle safety loops and cost accounting."""
