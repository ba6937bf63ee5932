// placeholder: implemented by the socket work
