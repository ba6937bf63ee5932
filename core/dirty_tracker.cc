// placeholder: implemented by the dirty-tracker work
